"""Layered config -> running children: how fast a change reaches them.

Starts a private etcd and ``--members`` supervisors (default 3) running one
sharded role whose child records every SIGHUP with the content of its
``ETCDVISOR_CONFIG_FILE`` (tests/e2e/seed_child.py). Then, ``--changes``
times (default 20, one every ``--interval`` s), writes a new value of a
``signal:HUP`` item at cluster scope with the library (no CLI start-up in
the figure) and prints the put -> HUP-with-the-new-file latency p50/p99/max
over every child, plus the put -> new child start latency of one
``restart`` change (settle and stop_timeout included: settle 0.2s).

    python bench/config_propagation.py [--members 3] [--changes 20] [--interval 0.3]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import emit
from _supervisors import BenchFleet
from etcdvisor.runtime.role_config import layered_config

CHILD = Path(__file__).resolve().parents[1] / "tests" / "e2e" / "seed_child.py"


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--members", type=int, default=3)
    parser.add_argument("--changes", type=int, default=20)
    parser.add_argument("--interval", type=float, default=0.3)
    args = parser.parse_args()
    fleet = BenchFleet("config")
    try:
        role = {"type": "sharded", "command": [sys.executable, str(CHILD)], "settle": "0.2s",
                "stop_timeout": "1s", "env": {"SEED_RECORD": str(fleet.record_path), "SEED_VARS": "PORT"},
                "config": {"LEVEL": {"item": "log.level", "default": "0", "on_change": "signal:HUP"},
                           "PORT": {"item": "port", "default": 1, "on_change": "restart"}}}
        fleet.start(args.members, fleet.write_config({"api": role}))
        cfg = layered_config(fleet.backend, fleet.cluster, None, "etcdvisor")
        deadline = time.monotonic() + 60
        while len({r["pid"] for r in fleet.records() if r["event"] == "start"
                   if r["index"] is not None}) < args.members:
            if time.monotonic() > deadline:
                print("children did not start", file=sys.stderr)
                emit("config_propagation", {"members": args.members, "error": "children did not start"})
                return 1
            time.sleep(0.1)
        time.sleep(2.0)  # resharding settles: every child runs with the final COUNT
        live = {}
        for r in fleet.records():
            if r["event"] == "start":
                live[r["member"]] = r["pid"]
        put_times = {}
        for n in range(1, args.changes + 1):
            put_times[str(n)] = time.time()
            cfg.set("log.level", str(n))
            time.sleep(args.interval)
        time.sleep(2.0)
        latencies, missing = [], 0
        for n, at in put_times.items():
            for pid in live.values():
                seen = [r["t"] for r in fleet.records() if r["event"] == "hup" and r["pid"] == pid
                        and (r["config"] or {}).get("LEVEL") == n]
                if seen:
                    latencies.append((min(seen) - at) * 1000)
                else:
                    missing += 1  # coalesced with the next change (batched), or lost
        put_at = time.time()
        cfg.set("port", 2)
        restarted = None
        while time.time() < put_at + 30 and restarted is None:
            fresh = [r["t"] for r in fleet.records() if r["event"] == "start" and r["t"] > put_at]
            restarted = min(fresh) if len(fresh) >= args.members else None
            time.sleep(0.05)
        print(f"members={args.members} changes={args.changes} interval={args.interval}s "
              f"pid={os.getpid()}")
        print(f"put -> HUP with new file: n={len(latencies)} p50={percentile(latencies, 0.5):.0f}ms "
              f"p99={percentile(latencies, 0.99):.0f}ms max={max(latencies):.0f}ms "
              f"(not seen individually: {missing})")
        if restarted is not None:
            print(f"put -> first restarted child (restart item): {(restarted - put_at) * 1000:.0f}ms")
        if os.environ.get("BENCH_DEBUG"):
            for t, line in fleet.log_lines():
                if t > put_at - 0.1:
                    print(f"{(t - put_at) * 1000:8.0f}ms {line}")
        emit("config_propagation", {
            "members": args.members, "changes": args.changes, "interval_s": args.interval,
            "hup_n": len(latencies), "hup_p50_ms": percentile(latencies, 0.5),
            "hup_p99_ms": percentile(latencies, 0.99), "hup_max_ms": max(latencies),
            "not_seen_individually": missing,
            "restart_first_child_ms": (restarted - put_at) * 1000 if restarted is not None else None})
        return 0
    finally:
        fleet.close()


if __name__ == "__main__":
    sys.exit(main())
