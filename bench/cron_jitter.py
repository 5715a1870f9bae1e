"""Cron start jitter of ``supervisor run``: how late after its scheduled time a tick's child starts.

Starts a private etcd and ``--members`` supervisors (default 1) with one
``@every 1s`` cron role whose child (a ``python3 -S`` one-liner) appends its
``time.time()`` and ``SCHEDULED_TIME``. After ``--seconds`` (default 30) it prints
p50/p99/max of (child start - scheduled time) in ms, and how many ticks ran
against how many were due between the first run and one second before the end
(missing and duplicated ticks are listed). The child's start includes the
interpreter's start-up (~10-20 ms), so this is an upper bound of the
supervisor's own lateness.

    python bench/cron_jitter.py [--seconds 30] [--members 1] [--every 1s]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import emit
from _supervisors import BenchFleet, percentile

ROLE = "tick"


def run(seconds: float, members: int, every: str) -> dict:
    fleet = BenchFleet("cron-jitter")
    try:
        config = fleet.write_config({ROLE: {
            "type": "cron", "schedule": f"@every {every}", "command": fleet.record_command(),
            "env": {"BENCH_RECORD": str(fleet.record_path)}, "stop_timeout": "1s"}})
        fleet.start(members, config)
        if not fleet.wait_roles(ROLE, members, timeout=60):
            print("supervisors did not start within 60s", file=sys.stderr)
            return {"error": "supervisors did not start within 60s"}
        begin = time.time()
        time.sleep(seconds)
        end = time.time()
        time.sleep(0.5)  # the last child has recorded itself
        return report(fleet.records(), begin, end, members, every)
    finally:
        fleet.close()


def report(records: list[dict], begin: float, end: float, members: int, every: str) -> dict:
    """Print the figures and return them (for the JSON line)."""
    runs = [(datetime.fromisoformat(r["scheduled_time"]).timestamp(), r["t"]) for r in records]
    print(f"cron jitter: @every {every}, {members} member(s), {end - begin:.0f}s observed, local etcd")
    if not runs:
        print("  no tick ran")
        return {"members": members, "every": every, "runs": 0}
    lateness = [(started - scheduled) * 1000 for scheduled, started in runs]
    counts = Counter(scheduled for scheduled, _ in runs)
    first = min(counts)
    period = min((b - a for a, b in zip(sorted(counts), sorted(counts)[1:])), default=1.0)
    due = [first + k * period for k in range(int((end - 1.0 - first) / period) + 1)]
    missing = [t for t in due if all(abs(t - s) > 0.001 for s in counts)]
    doubled = {datetime.fromtimestamp(t).isoformat(): n for t, n in counts.items() if n > 1}
    print(f"  ticks       : {len(due) - len(missing)} run of {len(due)} due (first run to 1s before the "
          f"end); missing {len(missing)}, run twice {len(doubled)}; {len(runs)} runs in all")
    print(f"  start - scheduled: p50 {percentile(lateness, .5):6.1f} ms, p99 {percentile(lateness, .99):6.1f} ms, "
          f"max {max(lateness):6.1f} ms, min {min(lateness):6.1f} ms")
    startup = interpreter_startup_ms()
    print(f"  (of which child interpreter start-up, measured here: ~{startup:.0f} ms)")
    if missing:
        print(f"  missing ticks: {[datetime.fromtimestamp(t).isoformat() for t in missing][:10]}")
    if doubled:
        print(f"  ticks run twice: {doubled}")
    return {"members": members, "every": every, "observed_s": end - begin, "due": len(due),
            "missing": len(missing), "run_twice": len(doubled), "runs": len(runs),
            "late_p50_ms": percentile(lateness, .5), "late_p99_ms": percentile(lateness, .99),
            "late_max_ms": max(lateness), "late_min_ms": min(lateness),
            "child_interpreter_startup_ms": startup}


def interpreter_startup_ms(samples: int = 5) -> float:
    """Median time from fork to the first line of a ``python3 -S`` child."""
    times = []
    for _ in range(samples):
        begin = time.time()
        out = subprocess.run([sys.executable, "-S", "-c", "import time; print(time.time())"],
                             capture_output=True, text=True, check=True).stdout
        times.append((float(out) - begin) * 1000)
    return statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--members", type=int, default=1)
    parser.add_argument("--every", default="1s", help="the @every period")
    args = parser.parse_args(argv)
    figures = run(min(args.seconds, 100.0), args.members, args.every)
    emit("cron_jitter", figures)
    return 1 if "error" in figures else 0


if __name__ == "__main__":
    sys.exit(main())
