"""Rolling restarts: how long `restart ROLE` takes and how many children stay ready.

Starts a private etcd and ``--members`` supervisors (default 10) running one sharded
role whose child sends sd_notify ``READY=1`` ``--ready`` s after its start (``health:
{notify: true}``). For each
``max_unavailable`` in ``--max-unavailable`` (default ``1,3,100%``) it issues one
rolling restart (the library call the CLI makes: no CLI start-up in the figure),
samples the status document (what `status --json` prints) every 50 ms, and reports:

* ``time``: from the trigger to the record's ``done``;
* ``expected``: ``ceil(N / max_unavailable) * (stop + start + ready)``, with stop + start
  the mean time from a child's "stop" line to its replacement's "start" line in this run;
* ``lowest_ready``: the lowest number of ready children, from the children's own start/stop
  lines (target: >= N - max_unavailable); ``lowest_ready_in_status``: the lowest seen in
  the status samples (member records: they may miss dips shorter than their ~1 s rate limit).

Then the detection time of a hung child: one member runs a child that answers HTTP,
with a liveness probe (``period`` 0.5 s, ``timeout`` 0.5 s, ``failure_threshold`` 2,
``stop_timeout`` 0.5 s); the child is frozen with SIGSTOP, and the time to its
replacement's start is compared with ``period * failure_threshold + timeout +
stop_timeout + 1 s``.

    python bench/rollout.py [--members 10] [--ready 0.5] [--max-unavailable 1,3,100%]
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import emit
from _supervisors import BenchFleet
from etcdvisor.coord.keys import ClusterKeys
from etcdvisor.runtime import rollout_store
from etcdvisor.status import gather

NOTIFY_CHILD = (
    "import json, os, signal, socket, sys, time\n"
    "def rec(event):\n"
    "    line = json.dumps({'event': event, 'pid': os.getpid(), 't': time.time(),"
    " 'member_id': os.environ.get('MEMBER_ID')})\n"
    "    fd = os.open(os.environ['WORK_RECORD'], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)\n"
    "    os.write(fd, (line + '\\n').encode()); os.close(fd)\n"
    "def stop(*_):\n"
    "    rec('stop'); sys.exit(0)\n"
    "signal.signal(signal.SIGTERM, stop)\n"
    "rec('start')\n"
    "time.sleep(float(os.environ['READY_AFTER']))\n"
    "rec('ready')\n"  # before READY=1: the supervisor can only learn it later
    "socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b'READY=1', os.environ['NOTIFY_SOCKET'])\n"
    "while True:\n"
    "    time.sleep(3600)\n"
)
HTTP_CHILD = (
    "import http.server, os, json, time\n"
    "port = 18000 + int(os.environ.get('INDEX', '0')) + int(os.environ['BENCH_PORT_BASE'])\n"
    "with open(os.environ['WORK_RECORD'], 'a') as f:\n"
    "    f.write(json.dumps({'event': 'http-start', 'pid': os.getpid(), 't': time.time()}) + '\\n')\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        self.send_response(200); self.end_headers(); self.wfile.write(b'ok')\n"
    "    def log_message(self, *a):\n"
    "        pass\n"
    "http.server.HTTPServer(('127.0.0.1', port), H).serve_forever()\n"
)


def ready_children(fleet: BenchFleet, role: str) -> tuple[int, int]:
    """(children ready, children) of ``role`` in the member records."""
    doc = gather(fleet.backend, fleet.cluster)
    children = [c for a in doc["roles"].get(role, {}).get("assignments", []) for c in a["children"].values()]
    return sum(1 for c in children if c.get("state") == "running" and c.get("ready") is True), len(children)


def wait_until(condition, timeout: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return False


def settled(fleet: BenchFleet, role: str, members: int) -> bool:
    doc = gather(fleet.backend, fleet.cluster)
    assignments = doc["roles"].get(role, {}).get("assignments", [])
    children = [c for a in assignments for c in a["children"].values()]
    return len(children) == members and all(c.get("ready") is True for c in children) and \
        all(a.get("count") == members and not a.get("stopping") for a in assignments)


def stop_to_start(records: list[dict], since: float) -> float:
    """Mean time from a child's "stop" line to its replacement's "start" line (stop +
    start, as the children record them)."""
    by_member: dict[str, list[dict]] = {}
    for rec in records:
        if rec.get("t", 0) >= since:
            by_member.setdefault(rec.get("member_id", ""), []).append(rec)
    gaps = []
    for recs in by_member.values():
        recs.sort(key=lambda r: r["t"])
        for a, b in zip(recs, recs[1:], strict=False):
            if a["event"] == "stop" and b["event"] == "start":
                gaps.append(b["t"] - a["t"])
    return sum(gaps) / len(gaps) if gaps else float("nan")


def lowest_ready_recorded(records: list[dict], start: float, end: float) -> int:
    """The lowest number of ready children between ``start`` and ``end`` by the children's
    own records (a child is ready from its "ready" line, written just before it sends
    READY=1, to its "stop" line): exact, where the status samples only see what the
    member records say."""
    intervals: dict[int, list[float]] = {}
    for rec in records:
        if rec["event"] == "ready":
            intervals[rec["pid"]] = [rec["t"], math.inf]
        elif rec["event"] == "stop" and rec["pid"] in intervals:
            intervals[rec["pid"]][1] = rec["t"]
    points = {start, end} | {t for a, b in intervals.values() for t in (a, b) if start <= t <= end}
    return min(sum(1 for a, b in intervals.values() if a <= t < b) for t in points)


def one_rollout(fleet: BenchFleet, keys: ClusterKeys, members: int, limit: str, ready: float) -> dict:
    record = rollout_store.new_record("api", "restart", "bench")
    began_wall = time.time()
    began = time.monotonic()
    rollout_store.start(fleet.backend, keys, record)
    lowest, samples = members, 0
    finished = None
    while time.monotonic() - began < 300:
        count, _total = ready_children(fleet, "api")
        lowest = min(lowest, count)
        samples += 1
        current = rollout_store.read_record(fleet.backend, keys, "api")
        if current is not None and current.state in (rollout_store.DONE, rollout_store.FAILED):
            finished = time.monotonic() - began
            break
        time.sleep(0.05)
    gap = stop_to_start(fleet.records(), began_wall)
    exact = lowest_ready_recorded(fleet.records(), began_wall, began_wall + (finished or 0.0))
    per_wave = (gap if math.isfinite(gap) else 0.0) + ready
    amount = members if limit.endswith("%") and float(limit[:-1]) >= 100 else \
        max(1, int(members * float(limit[:-1]) // 100)) if limit.endswith("%") else int(limit)
    expected = math.ceil(members / amount) * per_wave
    state = rollout_store.read_record(fleet.backend, keys, "api")
    return {"max_unavailable": limit, "state": state.state if state else None, "time": finished,
            "expected": expected, "ratio": (finished / expected) if finished and expected else None,
            "lowest_ready": exact, "lowest_ready_in_status": lowest, "floor": members - amount, "samples": samples,
            "stop_to_start": gap}


def rollouts(args) -> list[dict]:
    results = []
    for limit in args.max_unavailable.split(","):  # a fresh fleet each (a reload would restart the role)
        fleet = BenchFleet("rollout")
        try:
            role = {"type": "sharded", "command": [sys.executable, "-S", "-c", NOTIFY_CHILD], "settle": "0.2s",
                    "stop_timeout": "2s", "health": {"notify": True},
                    "env": {"WORK_RECORD": str(fleet.record_path), "READY_AFTER": str(args.ready)},
                    "rollout": {"max_unavailable": int(limit) if limit.isdigit() else limit,
                                "min_ready": "0s", "deadline": "60s"}}
            fleet.start(args.members, fleet.write_config({"api": role}, ttl=6))
            if not wait_until(lambda: settled(fleet, "api", args.members), 120):
                results.append({"max_unavailable": limit, "error": "children did not settle"})
                continue
            time.sleep(1.0)  # member records rewritten, nothing in flight
            results.append(one_rollout(fleet, ClusterKeys(fleet.cluster), args.members, limit, args.ready))
            print(results[-1], file=sys.stderr)
        finally:
            fleet.close()
    return results


def hung_child() -> dict:
    fleet = BenchFleet("hung")
    try:
        base = 1000 + os.getpid() % 20000
        role = {"type": "sharded", "command": [sys.executable, "-S", "-c", HTTP_CHILD], "settle": "0.2s",
                "stop_timeout": "0.5s", "env": {"WORK_RECORD": str(fleet.record_path),
                                                "BENCH_PORT_BASE": str(base)},
                "health": {"liveness": {"http": f"http://127.0.0.1:{{{18000 + base} + index}}/",
                                        "period": "0.5s", "timeout": "0.5s", "failure_threshold": 2}}}
        fleet.start(1, fleet.write_config({"api": role}, ttl=6))
        if not wait_until(lambda: any(r["event"] == "http-start" for r in fleet.records()), 60):
            return {"error": "child did not start"}
        time.sleep(1.5)  # serving
        first = [r for r in fleet.records() if r["event"] == "http-start"][-1]
        frozen = time.time()
        os.kill(first["pid"], signal.SIGSTOP)
        if not wait_until(lambda: any(r["event"] == "http-start" and r["t"] > frozen for r in fleet.records()),
                          30, 0.02):
            return {"error": "not replaced within 30 s"}
        replaced = min(r["t"] for r in fleet.records() if r["event"] == "http-start" and r["t"] > frozen)
        bound = 0.5 * 2 + 0.5 + 0.5 + 1.0
        return {"detected_and_replaced": replaced - frozen, "bound": bound}
    finally:
        fleet.close()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--members", type=int, default=10)
    parser.add_argument("--ready", type=float, default=0.5)
    parser.add_argument("--max-unavailable", default="1,3,100%")
    args = parser.parse_args()
    results = rollouts(args)
    hung = hung_child()
    emit("rollout", {"members": args.members, "ready_after": args.ready, "rollouts": results, "hung_child": hung})
    return 0


if __name__ == "__main__":
    sys.exit(main())
