"""Roll a 10-member sharded fleet (each member replaced in turn) in three modes.

Modes: join order with ``handoff: overlap``, join order with ``handoff: fenced``,
and fixed ``shards: 64`` (per-shard children, fenced). Every child is
``examples/worker.py`` (records its own start and stop; ``WORK_STOP_DELAY``
makes its shutdown take a while, as a real worker's would). For each mode:

* ``restarts``: child starts during the roll (after the first settled moment);
* ``max_overlap_ms``: longest time two children with intersecting partitions
  were alive at once (``hash % COUNT == INDEX``: (i, N) and (j, M) intersect
  unless N == M and i != j);
* ``gap_p50_ms`` / ``gap_p99_ms`` / ``gap_max_ms``: for sample keys ``k`` in
  ``0..L-1`` (``L`` a common multiple of every COUNT seen), each stretch of
  time during the roll in which no live child covered ``k``;
* ``roll_s``: from the first SIGTERM to the last settled moment.

Usage: ``python bench/sharding.py [--members 10] [--shards 64] [--stop 0.2]
[--settle 0.5]``. The last line is every figure as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import yaml

from etcdvisor.roles.assignment import Part, intersects
from etcdvisor.testing import EtcdServer

REPO = Path(__file__).resolve().parents[1]
WORKER = REPO / "examples" / "worker.py"


class Roll:
    def __init__(self, etcd_url: str, workdir: Path, mode: str, role: dict, ttl: int):
        self.dir = workdir / mode
        self.dir.mkdir(parents=True)
        self.record = self.dir / "records.jsonl"
        self.etcd_url = etcd_url
        self.procs: dict[str, subprocess.Popen] = {}
        self.first_dead: dict[int, float] = {}  # children that wrote no stop line (killed)
        role = {**role, "env": {**role.get("env", {}), "WORK_RECORD": str(self.record)}}
        doc = {"cluster": f"bench-{mode}-{os.urandom(3).hex()}", "etcd": {"endpoints": [etcd_url], "timeout": "10s"},
               "member": {"ttl": ttl, "state_dir": str(self.dir / "state")}, "roles": {"worker": role}}
        self.config = self.dir / "config.yaml"
        self.config.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")

    def start(self, member: str) -> None:
        env = dict(os.environ, ETCDVISOR_MEMBER_ID=member, ETCDVISOR_LOG_LEVEL="warning")
        with open(self.dir / f"{member}.out", "ab") as out:
            self.procs[member] = subprocess.Popen([sys.executable, "-m", "etcdvisor.cli", "run", str(self.config)],
                                                  env=env, stdout=out, stderr=subprocess.STDOUT,
                                                  stdin=subprocess.DEVNULL, cwd=self.dir)

    def stop(self, member: str) -> None:
        proc = self.procs.pop(member)
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)

    def intervals(self) -> list[dict]:
        starts, stops = {}, {}
        if self.record.exists():
            for line in self.record.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                (starts if rec["event"] == "start" else stops)[rec["pid"]] = rec
        for pid, rec in starts.items():
            if pid not in stops and pid not in self.first_dead and not _alive(pid, rec["t"]):
                self.first_dead[pid] = time.time()
        out = []
        for pid, rec in starts.items():
            count = int(rec["count"])
            parts = ([Part(int(s), count) for s in rec["shards"].split(",")] if rec.get("shards")
                     else [Part(int(rec["index"]), count)])
            out.append({"pid": pid, "member": rec["member_id"], "start": rec["t"],
                        "end": stops[pid]["t"] if pid in stops else self.first_dead.get(pid), "parts": parts})
        return out

    def settled(self, members: set[str], count: int, timeout: float = 60.0) -> float:
        deadline = time.time() + timeout
        while time.time() < deadline:
            for member, proc in list(self.procs.items()):
                if proc.poll() is not None:  # e.g. could not reach etcd on a loaded machine
                    print(f"  ({member} exited with {proc.returncode}; starting it again)", file=sys.stderr)
                    self.start(member)
            live = [i for i in self.intervals() if i["end"] is None]
            parts = sorted(p for i in live for p in i["parts"])
            if {i["member"] for i in live} == members and parts == [Part(k, count) for k in range(count)]:
                return time.time()
            time.sleep(0.05)
        raise TimeoutError(f"{self.dir.name}: no exact cover of {count} by {sorted(members)}")

    def close(self) -> None:
        for proc in self.procs.values():
            proc.kill()
            proc.wait(5)


def _alive(pid: int, started: float) -> bool:
    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE and proc.create_time() <= started + 1.0
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def run_roll(roll: Roll, members: int, count_of) -> dict:
    ids = [f"a{i}" for i in range(members)]
    for member in ids:
        roll.start(member)
    t0 = roll.settled(set(ids), count_of(members), timeout=90)
    time.sleep(0.5)
    began = time.time()
    for i in range(members):
        old, new = ids[i], f"r{i}"
        roll.stop(old)
        ids[i] = new
        roll.start(new)
        last = roll.settled(set(ids), count_of(members))
    return measure(roll.intervals(), t0, began, last)


def measure(intervals: list[dict], t0: float, began: float, last: float) -> dict:
    restarts = sum(1 for i in intervals if i["start"] > t0 + 0.25)
    overlap = 0.0
    ordered = sorted(intervals, key=lambda i: i["start"])
    for pos, a in enumerate(ordered):
        a_end = a["end"] or math.inf
        for b in ordered[pos + 1:]:
            if b["start"] >= a_end:
                break
            if any(intersects(p, q) for p in a["parts"] for q in b["parts"]):
                overlap = max(overlap, min(a_end, b["end"] or math.inf) - b["start"])
    counts = sorted({p.count for i in intervals for p in i["parts"]})
    period = math.lcm(*counts) if counts else 1
    gaps = []
    for key in range(min(period, 2000)):
        covering = sorted((i["start"], i["end"] or math.inf) for i in intervals
                          if any(key % p.count == p.index for p in i["parts"]))
        reach = began
        for start, end in covering:
            if start > reach and reach < last:
                gaps.append(min(start, last) - reach)
            reach = max(reach, end)
    gaps_ms = sorted(g * 1000 for g in gaps)

    def pct(q):
        return round(gaps_ms[min(len(gaps_ms) - 1, int(q * len(gaps_ms)))], 1) if gaps_ms else 0.0

    return {"restarts": restarts, "max_overlap_ms": round(overlap * 1000, 1), "gap_p50_ms": pct(0.5),
            "gap_p99_ms": pct(0.99), "gap_max_ms": round(gaps_ms[-1], 1) if gaps_ms else 0.0,
            "gaps": len(gaps_ms), "roll_s": round(last - began, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=10)
    parser.add_argument("--shards", type=int, default=64)
    parser.add_argument("--stop", type=float, default=0.2, help="child stop time, seconds")
    parser.add_argument("--settle", type=float, default=0.5)
    parser.add_argument("--ttl", type=int, default=6)
    parser.add_argument("--modes", default="join-overlap,join-fenced,shards",
                        help="comma-separated subset of: join-overlap, join-fenced, shards")
    args = parser.parse_args(argv)
    base = {"type": "sharded", "command": [sys.executable, "-S", str(WORKER)], "settle": f"{args.settle}s",
            "stop_timeout": "2s", "env": {"WORK_INTERVAL": "1000", "WORK_STOP_DELAY": str(args.stop)}}
    modes = {
        "join-overlap": ({**base, "handoff": "overlap"}, lambda m: m),
        "join-fenced": ({**base, "handoff": "fenced"}, lambda m: m),
        f"shards-{args.shards}": ({**base, "shards": args.shards}, lambda m: args.shards),
    }
    wanted = {m.strip() for m in args.modes.split(",")}
    modes = {k: v for k, v in modes.items() if k in wanted or k.split("-")[0] in wanted}
    figures: dict[str, dict] = {"members": args.members, "stop_s": args.stop, "settle_s": args.settle}
    server = EtcdServer(name="bench-sharding").start()
    workdir = Path(tempfile.mkdtemp(prefix="etcdvisor-bench-sharding-"))
    try:
        for mode, (role, count_of) in modes.items():
            roll = Roll(server.url, workdir, mode, role, args.ttl)
            try:
                result = run_roll(roll, args.members, count_of)
            finally:
                roll.close()
            figures[mode] = result
            print(f"{mode:>14}: restarts {result['restarts']}, max overlap {result['max_overlap_ms']} ms, "
                  f"gap p50/p99/max {result['gap_p50_ms']}/{result['gap_p99_ms']}/{result['gap_max_ms']} ms "
                  f"({result['gaps']} gaps), roll {result['roll_s']} s", flush=True)
    finally:
        server.stop()
    print(json.dumps(figures, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
