"""Measure ``supervisor run``: reshard latency and etcd load, singleton
failover and hand-off, idle cost. The last line of output is one JSON object
with every figure (bench/_report.py).

Prints figures, asserts nothing. Starts its own etcd (etcdvisor.testing.EtcdServer)
and its own processes in a temp directory::

    python bench/supervisor_bench.py [--members 10] [--leaves 5] [--settle 0.5] [--ttl 4]
                                     [--failovers 3] [--idle-seconds 30] [--skip idle ...]

1. Reshard, N members (default 10) running one sharded role: ``--leaves`` clean
   leaves in a row (SIGTERM; measured from the supervisor's exit; p99 over them)
   and one crash (SIGKILL) until every remaining member runs a child with the new
   COUNT (the start time the last such child recorded itself). A leave is expected
   near ``settle``, a crash near ``ttl + settle``. Leaves are also measured from the
   leaving member's child being reaped (polled) to the fork of the last new child
   (/proc start times), without the children's interpreter start-up. etcd's load is read from its
   /metrics (bench/_etcd_metrics.py): requests/s, keepalives/s and watch events/s in
   a quiet 10 s window, and requests, watch events and revisions per clean leave.
2. Singleton failover, 3 members: (a) the leader's supervisor is SIGKILLed: time
   until the new leader's child started; (b) it is stopped with SIGTERM: the clean
   hand-off, from the old child's exit to the new child's fork (its /proc start
   time) and to its first recorded line.
3. Idle cost: one supervisor with 5 idle children for ``--idle-seconds``, next to
   supervisord running the same 5 children in the same window: RSS and CPU%
   (psutil cpu_times delta over wall time). The supervisor's watchdog helper is shown
   on its own row.

Children are ``examples/worker.py``, which appends JSON lines (start/stop, pid, env)
to $WORK_RECORD (``--child sh``: ``bench/sh_worker.sh`` for the reshard, the same lines
from /bin/sh, so that N-1 interpreter start-ups do not dominate the reshard time);
all times are wall-clock (time.time()) on one machine.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _etcd_metrics import delta, scrape
from _fleet import (
    BenchTimeout,
    Fleet,
    _wait_reaped,
    fork_time,
    live_children,
    read_records,
)
from _idle import bench_idle, report_idle
from _report import emit
from etcdvisor.testing import EtcdServer, wait_for

# --- 1. reshard latency ----------------------------------------------------------------

# Members are started a few at a time, each batch joined before the next: 50
# interpreters starting at once on 2 cores starve etcd and each other, and a
# supervisor that cannot reach etcd within its timeout at start-up exits.
JOIN_BATCH = 5


def settled(fleet: Fleet, members: set[str], timeout: float, alive: Fleet | None = None,
            shards: int = 0) -> float:
    """Wait until each of ``members`` runs one child with COUNT=len(members) and the
    indices are 0..N-1 (with ``shards``: the shards 0..S-1 each run exactly once, on
    ``members`` only, each member running one or more if S >= N); return the start time of the newest of those children.
    With ``alive``, a supervisor of ``members`` that exited aborts the wait."""
    count = shards or len(members)

    def check():
        for member_id in members if alive is not None else ():
            if alive.procs[member_id].poll() is not None:
                log = (alive.dir / f"{member_id}.out").read_text(errors="replace").strip()
                raise BenchTimeout(f"supervisor {member_id} exited: {log.splitlines()[-1] if log else '?'}")
        live = [r for r in live_children(fleet.record, "worker") if r["count"] == str(count)]
        owners = {r["member_id"] for r in live}
        # fixed shards, at least as many as members: every member owns one or more
        if (owners == members if count >= len(members) else owners <= members) and \
                sorted(int(r["index"]) for r in live) == list(range(count)):
            return max(r["t"] for r in live)
        return None

    return wait_for(check, timeout, f"{count} members settled")


def newest_fork(fleet: Fleet, members: set[str], shards: int = 0) -> float:
    """When the newest of the members' running children was forked."""
    count = str(shards or len(members))
    return max(fork_time(r["pid"]) for r in live_children(fleet.record, "worker")
               if r["count"] == count and r["member_id"] in members)


def bench_reshard(workdir: Path, etcd_url: str, members: int, settle: float, ttl: int,
                  leaves: int = 5, child: str = "python", shards: int = 0) -> dict:
    """Clean leaves one after the other (N -> N-leaves), then one crash; etcd's
    load in a quiet window and per membership change (from its /metrics)."""
    fleet = Fleet(workdir, etcd_url, "reshard")
    try:
        keys = {"shards": shards} if shards else {}
        config = fleet.config({"worker": fleet.worker_role("sharded", child=child, settle=f"{settle}s", **keys)},
                              ttl)
        ids: set[str] = set()
        began = time.monotonic()
        for first in range(0, members, JOIN_BATCH):  # see JOIN_BATCH
            batch = [f"m{i}" for i in range(first, min(members, first + JOIN_BATCH))]
            for member_id in batch:
                fleet.start(member_id, config)
            ids.update(batch)
            settled(fleet, ids, timeout=60 + members, alive=fleet, shards=shards)
        join_seconds = time.monotonic() - began
        time.sleep(settle + 1.5)
        quiet = _quiet_load(etcd_url, seconds=10.0)

        leave_times, signal_times, fork_times, changes = [], [], [], []
        victims = [f"m{i}" for i in range(members - 1, 0, -max(1, members // (leaves + 1)))][:leaves]
        for victim in victims:
            before, t0 = scrape(etcd_url), time.monotonic()
            victim_child = [r["pid"] for r in live_children(fleet.record, "worker") if r["member_id"] == victim]
            sent = time.time()
            fleet.procs[victim].send_signal(signal.SIGTERM)
            reaped = max((_wait_reaped(pid, 30) for pid in victim_child), default=float("nan"))
            fleet.procs[victim].wait(30)
            exited = time.time()
            ids.discard(victim)
            done = settled(fleet, ids, timeout=30, shards=shards)
            leave_times.append(done - exited)
            signal_times.append(done - sent)
            fork_times.append(newest_fork(fleet, ids, shards) - reaped)
            time.sleep(settle + 1.0)  # the tail of the change (late watch events, claims)
            change = delta(before, scrape(etcd_url))
            window = time.monotonic() - t0
            change["window_s"] = window
            change["requests_minus_quiet"] = change["requests"] - quiet["requests_per_s"] * window
            change["watch_events_minus_quiet"] = change["watch_events"] - quiet["watch_events_per_s"] * window
            changes.append(change)

        killed = time.time()
        crash_victim = sorted(ids)[len(ids) // 2]
        fleet.procs[crash_victim].kill()
        fleet.procs[crash_victim].wait()
        ids.discard(crash_victim)
        crash_done = settled(fleet, ids, timeout=ttl + 30 + members, shards=shards)
        return {"members": members, "child": child, "shards": shards, "join_all_s": join_seconds,
                "leaves": len(leave_times),
                "leave_from_exit": leave_times, "leave_from_signal": signal_times,
                "leave_minus_settle_p99": percentile([t - settle for t in leave_times], 0.99),
                "leave_forked_from_reaped": fork_times,
                "leave_forked_minus_settle_p99": percentile([t - settle for t in fork_times], 0.99),
                "crash": crash_done - killed, "remaining": len(ids), "quiet_load": quiet,
                "per_leave": {"requests": statistics.median(c["requests_minus_quiet"] for c in changes),
                              "writes": statistics.median(c["writes"] for c in changes),
                              "watch_responses": statistics.median(c["watch_responses"] for c in changes),
                              "watch_events": statistics.median(c["watch_events_minus_quiet"] for c in changes),
                              "revisions": statistics.median(c["revisions"] for c in changes),
                              "detail": changes}}
    finally:
        fleet.close()


def _quiet_load(etcd_url: str, seconds: float) -> dict:
    """etcd's request, watch-event and revision rates while nothing changes."""
    before, t0 = scrape(etcd_url), time.monotonic()
    time.sleep(seconds)
    change = delta(before, scrape(etcd_url))
    wall = time.monotonic() - t0
    return {"seconds": wall, "requests_per_s": change["requests"] / wall,
            "watch_events_per_s": change["watch_events"] / wall,
            "watch_responses_per_s": change["watch_responses"] / wall, "writes_per_s": change["writes"] / wall,
            "revisions_per_s": change["revisions"] / wall, "keepalives_per_s": change["keepalives"] / wall,
            "watchers": change["watchers"], "watch_streams": change["watch_streams"],
            "by_method_per_s": {m: v / wall for m, v in change["by_method"].items()}}


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile (of 5 values, p99 is the maximum)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


# --- 2. singleton failover -------------------------------------------------------------

def bench_failover(workdir: Path, etcd_url: str, ttl: int, repetitions: int, how: str) -> list[dict]:
    """The leader's supervisor is SIGKILLed (``how="kill"``) or stopped with
    SIGTERM (``how="term"``); per repetition: kill/signal -> the new leader's
    child started, and (SIGTERM) the old child's last record (written as it
    exits, so just before it is reaped) -> the new child started."""
    fleet = Fleet(workdir, etcd_url, f"failover-{how}")
    try:
        config = fleet.config({"lead": fleet.worker_role("singleton")}, ttl)
        for i in range(3):
            fleet.start(f"s{i}", config)
        runs, token, spare = [], 0, 3
        for _ in range(repetitions):
            leader = wait_for(lambda above=token: _leader(fleet, above), 60, "a leader child")
            token = int(leader["leader_token"])
            time.sleep(1.5)  # let the followers' campaigns settle behind the leader
            proc = fleet.procs[leader["member_id"]]
            signalled = time.time()
            reaped = float("nan")
            if how == "kill":
                proc.kill()
            else:
                proc.send_signal(signal.SIGTERM)
                reaped = _wait_reaped(leader["pid"], 30)
            proc.wait(30)
            successor = wait_for(lambda above=token: _leader(fleet, above), ttl + 30, "a new leader child")
            run = {"from_signal": successor["t"] - signalled}
            if how == "term":
                stops = [r["t"] for r in read_records(fleet.record)
                         if r["event"] == "stop" and r["pid"] == leader["pid"]]
                stopped = stops[0] if stops else float("nan")
                run["from_old_child_exit"] = successor["t"] - stopped
                run["fork_from_old_child_exit"] = fork_time(successor["pid"]) - stopped
                run["fork_from_old_child_reaped"] = fork_time(successor["pid"]) - reaped
            runs.append(run)
            fleet.start(f"s{spare}", config)  # keep three candidates
            # let it finish starting (seconds of CPU on a loaded machine) before the
            # next measurement, which it would otherwise slow down
            log = fleet.dir / f"s{spare}.out"
            wait_for(lambda log=log: log.exists() and "joined cluster" in log.read_text(errors="replace"),
                     60, f"s{spare} joined")
            spare += 1
        return runs
    finally:
        fleet.close()


def _leader(fleet: Fleet, above: int) -> dict | None:
    live = [r for r in live_children(fleet.record, "lead")
            if r["leader"] == "1" and int(r["leader_token"]) > above]
    return live[-1] if live else None


# --- report --------------------------------------------------------------------------------

def report_reshard(res: dict, args) -> None:
    settle = args.settle
    kind = f"fixed shards ({args.shards})" if args.shards else "join order"
    print(f"\n[1] reshard latency, {args.members} members, sharded role, {kind}, {args.child} children "
          f"(settle {settle}s, ttl {args.ttl}s, stop_timeout 0.5s); all joined in {res['join_all_s']:.1f}s")
    print(f"  {res['leaves']} clean leaves (SIGTERM) -> the others run the new COUNT, after the "
          f"supervisor exited: {', '.join(f'{t:.2f}' for t in res['leave_from_exit'])}s; "
          f"minus settle, p99 {res['leave_minus_settle_p99']:.2f}s (target <= 0.5s)")
    print(f"  the same leaves, the leaving member's child reaped -> the last new child forked: "
          f"{', '.join(f'{t:.2f}' for t in res['leave_forked_from_reaped'])}s; minus settle, p99 "
          f"{res['leave_forked_minus_settle_p99']:.2f}s (target <= 0.5s)")
    print(f"  crash (SIGKILL)       -> {res['remaining']} members run the new COUNT: "
          f"{res['crash']:.2f}s after the kill; minus ttl+settle: {res['crash'] - args.ttl - settle:.2f}s")
    quiet, leave = res["quiet_load"], res["per_leave"]
    print(f"  etcd load, quiet: {quiet['requests_per_s']:.1f} requests/s "
          f"({quiet['requests_per_s'] / args.members:.2f} per member), "
          f"{quiet['keepalives_per_s']:.1f} keepalives/s, {quiet['watch_events_per_s']:.1f} watch events/s, "
          f"{quiet['revisions_per_s']:.2f} revisions/s, {quiet['watchers']:.0f} watchers on "
          f"{quiet['watch_streams']:.0f} streams")
    print(f"  etcd load per clean leave (median): {leave['writes']:.0f} requests besides keepalives and watch "
          f"messages, {leave['watch_responses']:.0f} watch responses sent ({leave['watch_events']:.0f} events by "
          f"etcd_debugging_mvcc_events_total, quiet rate subtracted), {leave['revisions']:.0f} revisions")


def report_failover(runs: list[dict], how: str, ttl: int) -> None:
    times = [r["from_signal"] for r in runs]
    label = "SIGKILLed" if how == "kill" else "stopped with SIGTERM"
    print(f"\n[2{'a' if how == 'kill' else 'b'}] singleton failover, 3 members, leader's supervisor {label} "
          f"(ttl {ttl}s), signal -> new leader's child started, {len(times)} runs")
    print(f"  min {min(times):.2f}s  median {statistics.median(times):.2f}s  max {max(times):.2f}s  "
          f"all: {', '.join(f'{t:.2f}' for t in times)}")
    if how == "term":
        reaped = [r["fork_from_old_child_reaped"] for r in runs]
        print(f"  hand-off, old child reaped -> new child forked: max {max(reaped) * 1000:.0f} ms "
              f"(target <= 200 ms; +-10 ms clock ticks), all: {', '.join(f'{t * 1000:.0f}' for t in reaped)} ms")
        forked = [r["fork_from_old_child_exit"] for r in runs]
        recorded = [r["from_old_child_exit"] for r in runs]
        print(f"  hand-off, old child's last line -> new child forked: max {max(forked) * 1000:.0f} ms "
              f"(adds the old interpreter's exit), all: {', '.join(f'{t * 1000:.0f}' for t in forked)} ms")
        print(f"  hand-off, old child's last line -> new child's first line (adds both interpreters): "
              f"max {max(recorded) * 1000:.0f} ms, all: {', '.join(f'{t * 1000:.0f}' for t in recorded)} ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=10)
    parser.add_argument("--leaves", type=int, default=5, help="clean leaves in a row (p99 over them)")
    parser.add_argument("--settle", type=float, default=0.5)
    parser.add_argument("--ttl", type=int, default=4,
                        help="member.ttl (4 is the smallest the slack rule accepts with stop_timeout 0.5s)")
    parser.add_argument("--child", choices=["python", "sh"], default="python",
                        help="reshard children: examples/worker.py, or bench/sh_worker.sh (no interpreter "
                             "start-up: times the supervisors rather than N-1 Python start-ups)")
    parser.add_argument("--shards", type=int, default=0,
                        help="reshard a fixed-shard role (shards: S) instead of join order")
    parser.add_argument("--failovers", type=int, default=3)
    parser.add_argument("--idle-seconds", type=float, default=30.0)
    parser.add_argument("--skip", action="append", default=[],
                        choices=["reshard", "failover", "handoff", "idle"])
    args = parser.parse_args(argv)
    if args.members < args.leaves + 2:
        parser.error("--members must be at least --leaves + 2")

    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="etcdvisor-bench-"))
    etcd = EtcdServer(name="bench-etcd").start()
    print(f"etcdvisor supervisor benchmark: {os.cpu_count()} CPUs, load average "
          f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}, etcd at {etcd.url}")
    figures: dict = {"load_at_start": list(os.getloadavg()), "settle_s": args.settle, "ttl_s": args.ttl}
    try:
        if "reshard" not in args.skip:
            figures["reshard"] = bench_reshard(workdir, etcd.url, args.members, args.settle, args.ttl,
                                               args.leaves, args.child, args.shards)
            report_reshard(figures["reshard"], args)
        for how, skip in (("kill", "failover"), ("term", "handoff")):
            if skip not in args.skip:
                runs = bench_failover(workdir, etcd.url, args.ttl, args.failovers, how)
                figures["failover_" + how] = runs
                report_failover(runs, how, args.ttl)
        if "idle" not in args.skip:
            rows = bench_idle(workdir, etcd, args.idle_seconds)
            figures["idle"] = {"seconds": args.idle_seconds, "rows": rows,
                               "etcdvisor_rss_mib": rows[0]["rss_mib"] + rows[1]["rss_mib"],
                               "etcdvisor_cpu_pct": rows[0]["cpu_pct"] + rows[1]["cpu_pct"],
                               "supervisord_rss_mib": rows[2]["rss_mib"],
                               "supervisord_cpu_pct": rows[2]["cpu_pct"],
                               "rss_ratio": (rows[0]["rss_mib"] + rows[1]["rss_mib"]) / rows[2]["rss_mib"]}
            report_idle(rows, args.idle_seconds)
    except BenchTimeout as exc:
        print(f"\nbenchmark aborted: {exc} (logs in {workdir})")
        emit("supervisor_bench", {**figures, "error": str(exc)})
        return 1
    finally:
        etcd.cleanup()
    print(f"\ntotal benchmark time {time.monotonic() - started:.0f}s")
    shutil.rmtree(workdir, ignore_errors=True)
    figures["elapsed_s"] = time.monotonic() - started
    emit("supervisor_bench", figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
