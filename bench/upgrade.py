"""In-place upgrade of ``supervisor run`` (``kill -USR2``): the loop gap and the keepalive gap.

Starts a private etcd and one supervisor with a sharded and a singleton role (each one
``sleep`` child) and a cron role (``@every 1s``), upgrades it ``--upgrades`` times
(default 5) with SIGUSR2, and reports per upgrade:

* ``loop_gap``: how long the decision loop did not turn (from the start of the quiesce on
  the old image to the first turn of the new one), as the member logs it;
  (``quiesce`` + ``interpreter``: exec -> the new image read its state + ``rejoin``: -> first turn);
* ``keepalive_gap``: between the last keepalive confirmed before the exec and the first
  one after it (send times), as the member logs it;
* ``lease_ttl_min``: the lowest remaining TTL of the member's lease that etcd reported
  (polled every 50 ms from here) during the upgrade: what was left of the lease;
* ``check``: SIGUSR2 -> exec (the check of the new code in a child process, off the loop);
* whether any child's pid changed (it must not).

    python bench/upgrade.py [--upgrades 5]

Ends with one JSON line (bench/_report.py).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import emit
from _supervisors import BenchFleet, percentile


def children(pid: int) -> set[int]:
    try:
        return {p.pid for p in psutil.Process(pid).children() if "watchdog_main" not in " ".join(p.cmdline())
                and p.name() == "sleep"}
    except psutil.Error:
        return set()


def run(upgrades: int) -> dict:
    fleet = BenchFleet("upgrade")
    try:
        sleeper = {"command": ["sleep", "100000"], "stop_timeout": "1s"}
        config = fleet.write_config({
            "shard": {"type": "sharded", **sleeper}, "single": {"type": "singleton", **sleeper},
            "tick": {"type": "cron", "schedule": "@every 1s", "command": ["true"], "stop_timeout": "1s"}})
        fleet.start(1, config)
        proc = fleet.procs[0]
        if not fleet.wait_roles("single", 1, 60):
            return {"error": "the member did not start"}
        deadline = time.monotonic() + 30
        while len(children(proc.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        before = children(proc.pid)
        lease = fleet.backend.get(f"/etcdvisor/{fleet.cluster}/members/b0").lease
        rows = []
        for n in range(upgrades):
            lowest = [10**9]
            stop = threading.Event()

            def poll(lowest=lowest, stop=stop) -> None:
                while not stop.wait(0.05):
                    lowest[0] = min(lowest[0], fleet.backend.lease_ttl(lease))

            poller = threading.Thread(target=poll, daemon=True)
            poller.start()
            seen = len([1 for _t, line in fleet.log_lines() if "upgrade done:" in line])
            sent = time.time()
            proc.send_signal(signal.SIGUSR2)
            done = None
            deadline = time.monotonic() + 60
            while done is None and time.monotonic() < deadline:
                lines = [(t, line) for t, line in fleet.log_lines() if "upgrade done:" in line]
                if len(lines) > seen:
                    done = lines[-1][1]
                time.sleep(0.05)
            time.sleep(0.5)  # a few more TTL samples after the first turn
            stop.set()
            poller.join(2)
            if done is None:
                return {"error": f"upgrade {n + 1} did not finish", "rows": rows}
            execs = [t for t, line in fleet.log_lines() if "upgrading to" in line]
            figures = json.loads(done.split("upgrade done: ", 1)[1])
            rows.append({"loop_gap": figures["loop_gap"], "keepalive_gap": figures["keepalive_gap"],
                         "quiesce": figures.get("quiesce"), "interpreter": figures.get("interpreter"),
                         "rejoin": figures.get("rejoin"),
                         "lease_ttl_min": lowest[0], "check": execs[-1] - sent if execs else None})
            print(f"upgrade {n + 1}: loop gap {figures['loop_gap']:.3f}s (quiesce {figures.get('quiesce')}s, "
                  f"new interpreter {figures.get('interpreter')}s, rejoin {figures.get('rejoin')}s), keepalive gap "
                  f"{figures['keepalive_gap']:.3f}s, lease TTL never below {lowest[0]}s, "
                  f"SIGUSR2 -> exec {rows[-1]['check']:.2f}s")
        after = children(proc.pid)
        loop = [r["loop_gap"] for r in rows]
        keep = [r["keepalive_gap"] for r in rows]
        return {"upgrades": len(rows), "ttl": 10,
                "loop_gap_p50": percentile(loop, 0.5), "loop_gap_max": max(loop),
                "keepalive_gap_p50": percentile(keep, 0.5), "keepalive_gap_max": max(keep),
                "lease_ttl_min": min(r["lease_ttl_min"] for r in rows),
                "children_kept": before == after and len(before) == 2, "rows": rows}
    finally:
        fleet.close()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upgrades", type=int, default=5)
    args = parser.parse_args(argv)
    figures = run(max(1, min(args.upgrades, 50)))
    emit("upgrade", figures)
    return 1 if "error" in figures else 0


if __name__ == "__main__":
    sys.exit(main())
