"""A child for the seed wiring e2e tests: records what it was started with and
what its files held when a signal arrived.

Appends JSON lines to $SEED_RECORD: ``start`` (pid, env of $SEED_VARS, the
config file and the peers file), ``hup`` (the files at that moment) and
``stop`` (on SIGTERM, then exit 0).
"""

import json
import os
import signal
import sys
import time


def read(path):
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError) as exc:
        return {"error": str(exc)}


def record(event):
    names = [n for n in os.environ.get("SEED_VARS", "").split(",") if n]
    entry = {"event": event, "pid": os.getpid(), "t": time.time(), "member": os.environ.get("MEMBER_ID"),
             "role": os.environ.get("ROLE"), "index": os.environ.get("INDEX"),
             "env": {n: os.environ.get(n) for n in names},
             "config_file": os.environ.get("ETCDVISOR_CONFIG_FILE"),
             "config": read(os.environ.get("ETCDVISOR_CONFIG_FILE")),
             "peers": read(os.environ.get("SEED_PEERS"))}
    with open(os.environ["SEED_RECORD"], "a", encoding="utf-8") as fh:
        fh.write(json.dumps(entry) + "\n")


def on_term(_signum, _frame):
    record("stop")
    sys.exit(0)


signal.signal(signal.SIGTERM, on_term)
signal.signal(signal.SIGHUP, lambda _s, _f: record("hup"))
record("start")
while True:
    time.sleep(3600)
