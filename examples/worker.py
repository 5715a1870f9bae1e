"""A tiny example worker: prints its place in the cluster and works until stopped.

Sharded children get INDEX/COUNT/EPOCH, singleton children LEADER/LEADER_TOKEN.
It exits 0 on SIGTERM (after WORK_STOP_DELAY seconds, default 0). Set WORK_RECORD=path to append JSON lines of
(start/stop, pid, env) for tests and demos.
"""

import json
import os
import signal
import sys
import time

FIELDS = ("ROLE", "MEMBER_ID", "INDEX", "COUNT", "EPOCH", "SHARDS", "LEADER", "LEADER_TOKEN", "SCHEDULED_TIME")


def record(event: str) -> None:
    path = os.environ.get("WORK_RECORD")
    if not path:
        return
    entry = {"event": event, "pid": os.getpid(), "t": time.time(),
             **{k.lower(): os.environ.get(k) for k in FIELDS}}
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(entry) + "\n")


def stop(_signum, _frame):
    time.sleep(float(os.environ.get("WORK_STOP_DELAY", "0")))  # simulate a slow, clean shutdown
    record("stop")
    print("stopping", flush=True)
    sys.exit(0)


signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)
record("start")
place = ", ".join(f"{k}={os.environ[k]}" for k in FIELDS if os.environ.get(k))
print(f"working as {place}", flush=True)
while True:
    time.sleep(float(os.environ.get("WORK_INTERVAL", "5")))
    print(f"still working as {place}", flush=True)
