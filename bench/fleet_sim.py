"""Simulate a fleet of N members against one real etcd, running the real runtime.

Usage::

    python bench/fleet_sim.py --members N [--roles sharded,singleton,cron] [--shards S] [--procs P]
                              [--settle 1.0] [--cold-start 5] [--ttl 10] [--leaves 5] [--crashes 2]
                              [--rollout 0.1] [--quiet 10] [--etcd URL] [--budget 1140]

Each simulated member is the real ``Supervisor`` (config, session and lease,
runners, decision loop, effects, member record, control, status) with only the
process layer replaced: its children are records (``etcdvisor.testing.fake_process``),
started at once and gone a few ms after a stop. Members are spread over ``P``
processes (``multiprocessing``; default: one per CPU, and at least one per 50 members:
one interpreter's lock holds about 50 through a cold start), one thread per member loop
plus its own edge threads; each member has its own etcd connection, lease and
watches. Every start and stop is appended, with its ``time.monotonic()`` (one
clock for every process of the machine), to one record file per process.

Scenarios, in this order on one fleet (a replacement joins after each leave and
each crash so the fleet stays at N; the joins are reported as ``join``):

* ``cold_start``: all N start within 5 s (``--cold-start``); one change;
* ``quiet``: nothing happens for ``--quiet`` s: writes/s and keepalives per member/s;
* ``leave`` (``--leaves`` times): one member stops cleanly (SIGTERM path);
* ``crash`` (``--crashes`` times): one member is killed as by SIGKILL (children
  gone at once, nothing revoked): the others see it when its lease expires;
* ``rollout``: ``--rollout`` of the fleet replaced one by one with a surge of one
  (a new member joins and converges, then an old one leaves); every join and every
  leave is one change.

The run keeps to ``--budget`` seconds (default 19 min): when changes are slow,
fewer leaves, crashes and replacements are made (the JSON says how many), and a
change that does not converge in time is counted in ``timeouts``.

A change has converged when the live children are exactly what the final
membership asks for: join order, each live member runs one child and the INDEX
values are 0..M-1 with COUNT = M; fixed shards, every shard is covered once by
a live member and each member holds floor or ceil of S/M shards; singleton, one
leader child on a live member. Its time is from the change to the last child
start or stop before that state held for ``settle`` + 1.5 s.

Per scenario: ``converge_p50_s``, ``converge_p99_s``, ``converge_max_s``;
per change (mean over the scenario's changes, from etcd's ``/metrics`` before
and after): ``requests`` (gRPC messages received other than keepalives),
``writes`` (revisions), ``watch_events`` (events sent to the members' watchers:
etcd's count minus the events of the simulator's own trace watch, which sees
every write once; the raw count is ``watch_events_etcd``),
``keepalives``; ``starts``/``stops`` (children, summed over the scenario);
``etcd_cpu_peak_pct``, ``etcd_rss_peak_mb``. Invariants over the whole run:
``overlaps`` (two children of intersecting partitions alive at once),
``uncovered`` (partitions, and the leader, no live child covers at the end), ``leaders_max``
(most leader children alive at once). The last line is all of it as one JSON
object; the exit status is 1 when an invariant failed or a change did not converge.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import multiprocessing as mp
import os
import random
import re
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _etcd_metrics  # noqa: E402

SHARDED, SINGLETON, CRON = "worker", "leader", "report"
MEMBERS_PER_PROC = 50  # the default --procs: see main()
ROLE_TYPES = {"sharded": SHARDED, "singleton": SINGLETON, "cron": CRON}
QUIET_AFTER = 1.5  # seconds (beyond settle) a converged state must hold


# --- the member processes ----------------------------------------------------------

_FOLD = re.compile(r"/(m\d{4}|[0-9a-f]{6,}|\d+)(?=/|$)")


def fold_key(key: str) -> str:
    """A key without its cluster prefix, member ids and numbers folded: ``members/*``."""
    if key.startswith("/etcdvisor/"):
        key = key.split("/", 3)[3] if key.count("/") >= 3 else key
    return _FOLD.sub("/*", key)


def _member_process(index: int, config_path: str, conn, record_path: str) -> None:  # pragma: no cover - child
    """Host members as threads; commands come on ``conn``: (verb, member_id)."""
    import logging

    from etcdvisor.config import load
    from etcdvisor.events import Signalled
    from etcdvisor.runtime.supervisor import StartupError, Supervisor
    from etcdvisor.testing.fake_process import FakeProcessLayer, RunEvent

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us
    logging.basicConfig(level=logging.WARNING, format=f"%(asctime)s p{index} %(threadName)s %(message)s")
    base = load(config_path, environ={}, default_member_id="sim")
    fd = os.open(record_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    lock = threading.Lock()

    def write(entry: dict) -> None:
        line = (json.dumps(entry) + "\n").encode()
        with lock:
            os.write(fd, line)

    def record(ev: RunEvent) -> None:
        write({"event": ev.event, "t": ev.t, "pid": ev.pid, "member": ev.member, "name": ev.name,
               "env": ev.env})

    # every watch event a member receives, by (watched key, event key), both folded: where the
    # fleet's watch events go (the ``watch_events_by_key`` breakdown)
    from etcdvisor.coord.etcd import watch as etcd_watch

    watch_counts: dict[str, int] = {}
    counts_lock = threading.Lock()
    deliver = etcd_watch.EtcdWatchStream.deliver

    def counting_deliver(self, item) -> None:
        events = getattr(item, "events", None)
        if events:
            watched = fold_key(self._key)
            with counts_lock:
                for ev in events:
                    kind = f"{'del' if ev.type == 1 else 'put'} {fold_key(ev.kv.key.decode())} (watch {watched})"
                    watch_counts[kind] = watch_counts.get(kind, 0) + 1
        deliver(self, item)

    etcd_watch.EtcdWatchStream.deliver = counting_deliver

    # cron runs and other one-shots end by themselves after 50 ms
    layer = FakeProcessLayer(record, exit_after=lambda spec: 0.05 if "@" in spec.name else None)
    members: dict[str, tuple[Supervisor, threading.Thread]] = {}

    def host(member: str, sup: Supervisor) -> None:
        try:
            code = sup.run(signals=False)
        except StartupError as exc:
            code = -1
            write({"event": "member_failed", "t": time.monotonic(), "member": member, "error": str(exc)})
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            code = -2
            write({"event": "member_failed", "t": time.monotonic(), "member": member, "error": repr(exc)})
        write({"event": "member_exit", "t": time.monotonic(), "member": member, "code": code})

    while True:
        verb, member = conn.recv()
        if verb == "start":
            config = dataclasses.replace(base, member=dataclasses.replace(base.member, id=member))
            sup = Supervisor(config, environ=dict(os.environ), process_layer=layer.manager(member))
            thread = threading.Thread(target=host, args=(member, sup), name=member, daemon=True)
            members[member] = (sup, thread)
            thread.start()
            conn.send(("ok", member))
        elif verb == "stop":
            members[member][0].inbox.put(Signalled(signal.SIGTERM))
            conn.send(("ok", member))
        elif verb == "crash":
            members[member][0].crash()
            conn.send(("ok", member))
        elif verb == "watch_counts":
            with counts_lock:
                taken = dict(watch_counts)
                watch_counts.clear()
            conn.send(("ok", taken))
        elif verb == "stats":
            proc = psutil.Process()
            conn.send(("ok", {"threads": threading.active_count(), "rss_mb": proc.memory_info().rss / 2**20,
                              "members": len(members)}))
        elif verb == "quit":
            for sup, _thread in members.values():
                sup.inbox.put(Signalled(signal.SIGTERM))
            for _sup, thread in members.values():
                thread.join(30)
            conn.send(("ok", None))
            return


class Worker:
    def __init__(self, index: int, config_path: Path, workdir: Path):
        self.record = workdir / f"records-{index}.jsonl"
        self.record.touch()
        ctx = mp.get_context("spawn")  # a clean interpreter: no inherited threads or gRPC state
        self.conn, child_conn = ctx.Pipe()
        self.proc = ctx.Process(target=_member_process, args=(index, str(config_path), child_conn,
                                                                str(self.record)), daemon=True)
        self.proc.start()
        self.offset = 0
        self.members: set[str] = set()
        self.lock = threading.Lock()

    def call(self, verb: str, member: str | None = None, timeout: float = 60.0):
        with self.lock:
            self.conn.send((verb, member))
            if not self.conn.poll(timeout):
                raise TimeoutError(f"member process {self.proc.pid}: no answer to {verb}")
            status, value = self.conn.recv()
        return value

    def read_new(self) -> list[dict]:
        with open(self.record, "rb") as fh:
            fh.seek(self.offset)
            data = fh.read()
        end = data.rfind(b"\n") + 1
        self.offset += end
        return [json.loads(line) for line in data[:end].splitlines() if line]


# --- the fleet, seen from the records ------------------------------------------------

@dataclasses.dataclass
class Run:
    member: str
    role: str
    parts: tuple[tuple[int, int], ...]  # (index, count)
    leader: bool
    start: float
    end: float | None = None


def _parts(env: dict) -> tuple[tuple[int, int], ...]:
    count = int(env.get("COUNT") or 0)
    if env.get("SHARDS"):
        return tuple((int(s), count) for s in env["SHARDS"].split(",") if s)
    if env.get("INDEX"):
        return ((int(env["INDEX"]), count),)
    return ()


class Fleet:
    def __init__(self, args, workdir: Path, etcd_url: str, config_path: Path):
        self.args = args
        self.etcd_url = etcd_url
        self.workers = [Worker(i, config_path, workdir) for i in range(args.procs)]
        self.alive: dict[str, Worker] = {}
        self.runs: dict[int, Run] = {}
        self.events: list[tuple[float, str]] = []  # (t, start|stop) of children
        self.failures: list[str] = []
        self.exited: set[str] = set()
        self.serial = 0

    # members
    def new_id(self) -> str:
        self.serial += 1
        return f"m{self.serial:04d}"

    def start(self, member: str | None = None) -> str:
        member = member or self.new_id()
        worker = min(self.workers, key=lambda w: len(w.members))
        worker.members.add(member)
        worker.call("start", member)
        self.alive[member] = worker
        return member

    def stop(self, member: str, verb: str = "stop") -> None:
        worker = self.alive.pop(member)
        worker.members.discard(member)
        worker.call(verb, member)

    def take_watch_counts(self) -> dict[str, int]:
        """Watch events the members received since the last call, by watched and event key."""
        out: dict[str, int] = {}
        for worker in self.workers:
            for kind, count in worker.call("watch_counts").items():
                out[kind] = out.get(kind, 0) + count
        return out

    # records
    def poll(self) -> None:
        for worker in self.workers:
            for rec in worker.read_new():
                kind = rec["event"]
                if kind == "start":
                    env = rec["env"]
                    self.runs[rec["pid"]] = Run(rec["member"], env.get("ROLE", ""), _parts(env),
                                                env.get("LEADER") == "1", rec["t"])
                    self.events.append((rec["t"], "start"))
                elif kind == "stop":
                    run = self.runs.get(rec["pid"])
                    if run is not None:
                        run.end = rec["t"]
                    self.events.append((rec["t"], "stop"))
                elif kind == "member_failed":
                    self.failures.append(f"{rec['member']}: {rec['error']}")
                elif kind == "member_exit":
                    self.exited.add(rec["member"])

    def live(self) -> list[Run]:
        return [r for r in self.runs.values() if r.end is None]

    def missing(self) -> int:
        """Partitions (and leaders) the live children do not cover as the
        membership asks; 0 = converged."""
        members = set(self.alive)
        live = self.live()
        wrong = sum(1 for r in live if r.member not in members)
        missing = 0
        if SHARDED in self.args.role_names:
            runs = [r for r in live if r.role == SHARDED and r.member in members]
            held: dict[str, int] = {m: 0 for m in members}
            covered: dict[tuple[int, int], int] = {}
            for run in runs:
                held[run.member] += len(run.parts)
                for part in run.parts:
                    covered[part] = covered.get(part, 0) + 1
            if self.args.shards:
                want = {(s, self.args.shards) for s in range(self.args.shards)}
                low, high = self.args.shards // max(1, len(members)), math.ceil(self.args.shards / max(1, len(members)))
                missing += sum(1 for m in members if not low <= held[m] <= high)
            else:
                want = {(i, len(members)) for i in range(len(members))}
                missing += sum(1 for m in members if held[m] != 1)
            missing += len(want - set(covered)) + sum(1 for p, n in covered.items() if p not in want or n > 1)
        if SINGLETON in self.args.role_names:
            leaders = [r for r in live if r.role == SINGLETON and r.leader and r.member in members]
            missing += abs(len(leaders) - 1)
        return missing + wrong

    def uncovered(self) -> int:
        """Partitions of the final assignment no live child covers (and a missing leader)."""
        members, live = set(self.alive), self.live()
        out = 0
        if SHARDED in self.args.role_names:
            covered = {p for r in live if r.role == SHARDED and r.member in members for p in r.parts}
            want = ({(s, self.args.shards) for s in range(self.args.shards)} if self.args.shards
                    else {(i, len(members)) for i in range(len(members))})
            out += len(want - covered)
        if SINGLETON in self.args.role_names:
            out += 0 if any(r.role == SINGLETON and r.leader and r.member in members for r in live) else 1
        return out

    def wait_converged(self, since: float, timeout: float) -> float | None:
        """Seconds from ``since`` to the last child event before the fleet
        converged (and stayed so for settle + QUIET_AFTER); None on timeout."""
        hold = self.args.settle + QUIET_AFTER
        deadline = time.monotonic() + timeout
        stable_since: float | None = None
        seen = -1
        while time.monotonic() < deadline:
            self.poll()
            if len(self.events) != seen:
                seen, stable_since = len(self.events), None
            if self.missing() == 0:
                if stable_since is None:
                    stable_since = time.monotonic()
                elif time.monotonic() - stable_since >= hold:
                    last = max((t for t, _ in self.events if t >= since), default=since)
                    return last - since
            else:
                stable_since = None
            time.sleep(0.05)
        return None

    def close(self) -> None:
        for worker in self.workers:
            try:
                worker.call("quit", timeout=60)
            except (TimeoutError, OSError, EOFError):
                pass
            worker.proc.join(5)
            if worker.proc.is_alive():
                worker.proc.kill()


# --- what is written --------------------------------------------------------------

class KeyTrace:
    """Counts the cluster's key changes by kind (the key with member ids and
    numbers folded: ``members/*``, ``roles/worker/shard/*``...), from one watch."""

    def __init__(self, etcd_url: str, cluster: str):
        from etcdvisor.coord import open_backend

        self.prefix = f"/etcdvisor/{cluster}/"
        self.backend = open_backend(etcd_url, timeout=10.0)
        self.counts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stream = self.backend.watch(self.prefix, self.prefix[:-1] + "0")
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        try:
            for batch in self._stream:
                with self._lock:
                    for ev in batch.events:
                        kind = ("del " if ev.type.name == "DELETE" else "put ") + fold_key(ev.kv.key)
                        self.counts[kind] = self.counts.get(kind, 0) + 1
        except Exception:  # noqa: BLE001 - closed at the end
            return

    def take(self) -> dict[str, int]:
        with self._lock:
            out, self.counts = dict(sorted(self.counts.items(), key=lambda kv: -kv[1])), {}
        return out

    def close(self) -> None:
        self._stream.cancel()
        self.backend.close()


# --- etcd sampling -----------------------------------------------------------------

class EtcdSampler:
    """Peak CPU (percent of one core) and RSS of the etcd process, per window."""

    def __init__(self, pid: int | None):
        self.proc = psutil.Process(pid) if pid else None
        self.cpu_peak = 0.0
        self.rss_peak = 0.0
        self._stop = threading.Event()
        if self.proc is not None:
            self.proc.cpu_percent(None)
            threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            try:
                self.cpu_peak = max(self.cpu_peak, self.proc.cpu_percent(None))
                self.rss_peak = max(self.rss_peak, self.proc.memory_info().rss / 2**20)
            except psutil.Error:
                return

    def window(self) -> tuple[float, float]:
        """Peaks since the last call."""
        out = (round(self.cpu_peak, 1), round(self.rss_peak, 1))
        self.cpu_peak = 0.0
        self.rss_peak = 0.0
        return out

    def stop(self) -> None:
        self._stop.set()


# --- the run -----------------------------------------------------------------------

def percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


class Scenario:
    def __init__(self, name: str, fleet: Fleet, sampler: EtcdSampler, trace: KeyTrace | None = None):
        self.name, self.fleet, self.sampler, self.trace = name, fleet, sampler, trace
        self.keys: dict[str, int] = {}
        self.watch_keys: dict[str, int] = {}
        self.trace_events: list[int] = []  # events of the simulator's own trace watch, per change
        self.converge: list[float] = []
        self.deltas: list[dict] = []
        self.timeouts = 0
        self.uncovered = 0
        self.starts = self.stops = 0
        self.cpu_peak = self.rss_peak = 0.0

    def change(self, act, timeout: float) -> float | None:
        fleet = self.fleet
        fleet.poll()
        before = _etcd_metrics.scrape(fleet.etcd_url)
        starts, stops = len(fleet.runs), sum(1 for r in fleet.runs.values() if r.end is not None)
        if self.trace is not None:
            self.trace.take()
        fleet.take_watch_counts()
        self.sampler.window()
        since = time.monotonic()
        act()
        took = fleet.wait_converged(since, timeout)
        cpu, rss = self.sampler.window()
        self.cpu_peak, self.rss_peak = max(self.cpu_peak, cpu), max(self.rss_peak, rss)
        traced = 0
        if self.trace is not None:
            time.sleep(0.2)  # the trace's last events (etcd counted them when it sent them)
            for key, count in self.trace.take().items():
                self.keys[key] = self.keys.get(key, 0) + count
                traced += count
        self.trace_events.append(traced)
        for key, count in fleet.take_watch_counts().items():
            self.watch_keys[key] = self.watch_keys.get(key, 0) + count
        self.starts += len(fleet.runs) - starts
        self.stops += sum(1 for r in fleet.runs.values() if r.end is not None) - stops
        self.deltas.append(_etcd_metrics.delta(before, _etcd_metrics.scrape(fleet.etcd_url)))
        if took is None:
            self.timeouts += 1
            print(f"  {self.name}: no convergence within {timeout:.0f}s ({fleet.missing()} off); alive "
                  f"{sorted(fleet.alive)}; live children "
                  f"{sorted((r.member, r.role, r.parts, r.leader) for r in fleet.live())}", file=sys.stderr)
        else:
            self.converge.append(took)
            self.uncovered += fleet.uncovered()  # when it gave up waiting
        return took

    def result(self) -> dict:
        fleet = self.fleet
        fleet.poll()
        n = max(1, len(self.deltas))

        def mean(key: str) -> float:
            return round(sum(d[key] for d in self.deltas) / n, 1)

        keepalives = [d["by_method"].get("LeaseKeepAlive", 0.0) for d in self.deltas]
        return {
            "changes": len(self.deltas),
            "converge_p50_s": _r(percentile(self.converge, 0.5)),
            "converge_p99_s": _r(percentile(self.converge, 0.99)),
            "converge_max_s": _r(max(self.converge) if self.converge else None),
            "timeouts": self.timeouts,
            "requests": round(sum(d["requests"] - d["by_method"].get("LeaseKeepAlive", 0.0)
                                  for d in self.deltas) / n, 1),
            "writes": mean("revisions"),
            # the fleet's: etcd's count minus the events of the simulator's own trace watch
            "watch_events": round((sum(d["watch_events"] for d in self.deltas) - sum(self.trace_events)) / n, 1),
            "watch_events_etcd": mean("watch_events"),
            "watch_events_received": round(sum(self.watch_keys.values()) / n, 1),
            "keepalives": round(sum(keepalives) / n, 1),
            "starts": self.starts,
            "stops": self.stops,
            "etcd_cpu_peak_pct": self.cpu_peak,
            "etcd_rss_peak_mb": self.rss_peak,
            "uncovered_at_timeout": self.uncovered,
            "writes_by_key": {k: round(v / n, 1) for k, v in sorted(self.keys.items(), key=lambda kv: -kv[1])},
            "watch_events_by_key": {k: round(v / n, 1)
                                    for k, v in sorted(self.watch_keys.items(), key=lambda kv: -kv[1])},
        }


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def check_invariants(fleet: Fleet) -> dict:
    """Sweep every child's [start, end) in time order: intersecting sharded
    partitions alive at once, and the most leader children alive at once."""
    points = []
    for pid, run in fleet.runs.items():
        points.append((run.start, 1, pid))
        points.append((run.end if run.end is not None else math.inf, 0, pid))
    points.sort()  # at equal times, ends (0) before starts (1)
    by_count: dict[int, dict[int, int]] = {}  # count -> index -> live children holding it
    leaders = leaders_max = overlaps = 0
    for _t, starting, pid in points:
        run = fleet.runs[pid]
        if run.role == SINGLETON and run.leader:
            leaders += 1 if starting else -1
            leaders_max = max(leaders_max, leaders)
        if run.role != SHARDED:
            continue
        for index, count in run.parts:
            if starting:
                others = sum(n for c, idx in by_count.items() if c != count for n in idx.values())
                if others or by_count.get(count, {}).get(index, 0):
                    overlaps += 1
                    if overlaps <= 5:
                        live = sorted((round(r.start, 3), r.member, r.parts) for r in fleet.runs.values()
                                      if r.role == SHARDED and r.start <= run.start
                                      and (r.end is None or r.end > run.start) and r is not run)
                        print(f"  overlap: {run.member} {run.parts} at {run.start:.3f} with {live}",
                              file=sys.stderr)
                by_count.setdefault(count, {})[index] = by_count.get(count, {}).get(index, 0) + 1
            else:
                held = by_count[count]
                held[index] -= 1
                if not held[index]:
                    del held[index]
                if not held:
                    del by_count[count]
    return {"overlaps": overlaps, "leaders_max": leaders_max}


def write_config(args, workdir: Path, etcd_url: str) -> Path:
    roles: dict = {}
    for kind in args.role_names_kinds:
        if kind == "sharded":
            role: dict = {"type": "sharded", "command": ["sleep", "1000000"], "settle": f"{args.settle}s",
                          "stop_timeout": "1s"}
            if args.shards:
                role["shards"] = args.shards
            roles[SHARDED] = role
        elif kind == "singleton":
            roles[SINGLETON] = {"type": "singleton", "command": ["sleep", "1000000"], "stop_timeout": "1s"}
        elif kind == "cron":
            roles[CRON] = {"type": "cron", "schedule": "* * * * *", "command": ["true"]}
    doc = {"cluster": args.cluster,
           "etcd": {"endpoints": [etcd_url], "timeout": "10s"},
           "member": {"ttl": args.ttl, "state_dir": str(workdir / "state")},
           "log": {"level": "warning"},
           "roles": roles}
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, required=True)
    parser.add_argument("--roles", default="sharded,singleton",
                        help="comma-separated role types: sharded, singleton, cron (default sharded,singleton)")
    parser.add_argument("--shards", type=int, default=0, help="fixed shards (default: join order)")
    parser.add_argument("--procs", type=int, default=0,
                        help=f"member processes (default: one per CPU, at least one per {MEMBERS_PER_PROC} members)")
    parser.add_argument("--settle", type=float, default=1.0)
    parser.add_argument("--cold-start", type=float, default=None,
                        help="seconds over which the N members start (default 5: the issue's cold start)")
    parser.add_argument("--ttl", type=int, default=10)
    parser.add_argument("--leaves", type=int, default=5, help="leave repetitions")
    parser.add_argument("--crashes", type=int, default=2, help="crash repetitions")
    parser.add_argument("--rollout", type=float, default=0.1, help="fraction of the fleet replaced")
    parser.add_argument("--quiet", type=float, default=10.0, help="seconds of the quiet measurement")
    parser.add_argument("--etcd", default=None, help="use this etcd (its /metrics on the same URL)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--budget", type=float, default=1140.0,
                        help="seconds for the whole run (default 19 min): repetitions beyond it are left out")
    args = parser.parse_args(argv)
    kinds = [k.strip() for k in args.roles.split(",") if k.strip()]
    bad = [k for k in kinds if k not in ROLE_TYPES]
    if bad or not kinds:
        parser.error(f"--roles: unknown role type {bad[0] if bad else '(none)'!r}; use sharded, singleton, cron")
    if args.members < 2:
        parser.error("--members: at least 2")
    args.role_names_kinds = kinds
    args.cluster = f"sim-{os.urandom(3).hex()}"
    args.role_names = {ROLE_TYPES[k] for k in kinds}
    # one interpreter (one GIL) holds about 50 members through a cold start: 150 per process
    # starved their keepalives on 2 cores (leases expired), 50 did not (2026-12-07, N=200)
    args.procs = args.procs or min(max(os.cpu_count() or 1, -(-args.members // MEMBERS_PER_PROC)), args.members)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    rng = random.Random(args.seed)
    workdir = Path(tempfile.mkdtemp(prefix="fleet-sim-"))
    server = None
    if args.etcd:
        etcd_url, etcd_pid = args.etcd, None
    else:
        from etcdvisor.testing import EtcdServer

        # a fleet's etcd: large enough a backend, history compacted every few minutes
        server = EtcdServer(name="fleet-sim", extra_args=(
            "--quota-backend-bytes", str(4 * 2**30), "--auto-compaction-mode", "periodic",
            "--auto-compaction-retention", "5m", "--snapshot-count", "50000"))
        server.start()
        etcd_url, etcd_pid = server.url, server.proc.pid
    config_path = write_config(args, workdir, etcd_url)
    from etcdvisor.config import ConfigError, load

    try:
        load(config_path, environ={}, default_member_id="sim")
    except ConfigError as exc:
        print(f"fleet_sim: {exc}", file=sys.stderr)
        if server is not None:
            server.cleanup()
        return 2
    sampler = EtcdSampler(etcd_pid)
    trace = KeyTrace(etcd_url, args.cluster)
    fleet = Fleet(args, workdir, etcd_url, config_path)
    started = time.monotonic()
    n = args.members
    scenarios: dict[str, dict] = {}
    extra: dict = {}
    final_uncovered = -1
    try:
        def log(text: str) -> None:
            print(f"[{time.monotonic() - started:7.1f}s] {text}", file=sys.stderr, flush=True)

        # cold start: N members within 5 s
        cold = Scenario("cold_start", fleet, sampler, trace)
        # "all N start within 5 s": spread over it (over --cold-start s when given)
        spread = min(5.0, 0.1 * n) if args.cold_start is None else args.cold_start

        def cold_start() -> None:
            t0 = time.monotonic()
            for i in range(n):
                delay = t0 + spread * i / n - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                fleet.start()

        log(f"cold start of {n} members in {args.procs} processes")
        cold.change(cold_start, timeout=max(120.0, 0.6 * n))
        scenarios["cold_start"] = cold.result()
        log(f"cold_start: {scenarios['cold_start']}")
        stats = [w.call("stats") for w in fleet.workers]
        extra["member_processes"] = {"threads": sum(s["threads"] for s in stats),
                                     "rss_mb": round(sum(s["rss_mb"] for s in stats), 1)}

        # quiet cost
        trace.take()
        before = _etcd_metrics.scrape(etcd_url)
        procs = [psutil.Process(w.proc.pid) for w in fleet.workers]
        cpu_before = sum(sum(p.cpu_times()[:2]) for p in procs)
        time.sleep(args.quiet)
        member_cpu = (sum(sum(p.cpu_times()[:2]) for p in procs) - cpu_before) / args.quiet
        quiet = _etcd_metrics.delta(before, _etcd_metrics.scrape(etcd_url))
        cpu, rss = sampler.window()
        keepalives = quiet["by_method"].get("LeaseKeepAlive", 0.0)
        time.sleep(0.2)
        traced = trace.take()
        extra["quiet"] = {"seconds": args.quiet,
                          "writes_per_s": round(quiet["revisions"] / args.quiet, 3),
                          "requests_per_s": round((quiet["requests"] - keepalives
                                                   - quiet["by_method"].get("Watch", 0.0)) / args.quiet, 3),
                          "keepalives_per_member_s": round(keepalives / args.quiet / n, 3),
                          "watch_events_per_s": round((quiet["watch_events"] - sum(traced.values()))
                                                      / args.quiet, 3),
                          "watchers": quiet["watchers"], "watch_streams": quiet["watch_streams"],
                          "etcd_cpu_peak_pct": cpu, "etcd_rss_peak_mb": rss, "writes_by_key": traced,
                          "member_cpu_pct": round(100 * member_cpu, 1),
                          "member_cpu_pct_per_member": round(100 * member_cpu / n, 3)}
        log(f"quiet: {extra['quiet']}")

        join = Scenario("join", fleet, sampler, trace)
        settle_timeout = args.settle + 60.0
        budget_end = started + args.budget

        def within(timeout: float) -> float:
            """A change's timeout, cut to what is left of the budget (30 s kept to close)."""
            return max(5.0, min(timeout, budget_end - 30.0 - time.monotonic()))

        phases_start = time.monotonic()
        share = {"leave": 0.3, "crash": 0.3}  # of the time left; the rollout gets the rest
        for name, reps, verb, timeout in (("leave", args.leaves, "stop", settle_timeout),
                                          ("crash", args.crashes, "crash", args.ttl + settle_timeout)):
            scenario = Scenario(name, fleet, sampler, trace)
            phase_end = time.monotonic() + share[name] * (budget_end - phases_start)
            for rep in range(reps):
                if rep and time.monotonic() > phase_end:
                    log(f"{name}: {rep} of {reps} repetitions within the time budget")
                    break
                victim = rng.choice(sorted(fleet.alive))
                scenario.change(lambda v=victim: fleet.stop(v, verb), within(timeout))
                join.change(fleet.start, within(settle_timeout))
            scenarios[name] = scenario.result()
            log(f"{name}: {scenarios[name]}")
        scenarios["join"] = join.result()

        rollout = Scenario("rollout", fleet, sampler, trace)
        old = sorted(fleet.alive)
        rng.shuffle(old)
        replaced = max(1, round(args.rollout * n))
        done = 0
        for victim in old[:replaced]:
            if done and time.monotonic() > budget_end - 60.0:
                log(f"rollout: {done} of {replaced} replacements within the time budget")
                break
            rollout.change(fleet.start, within(settle_timeout))
            rollout.change(lambda v=victim: fleet.stop(v), within(settle_timeout))
            done += 1
        scenarios["rollout"] = rollout.result()
        scenarios["rollout"]["replaced"] = done
        scenarios["rollout"]["planned"] = replaced
        log(f"rollout: {scenarios['rollout']}")
        fleet.wait_converged(time.monotonic(), max(10.0, min(120.0, budget_end - time.monotonic())))
        final_uncovered = fleet.uncovered()
    finally:
        fleet.close()
        sampler.stop()
        trace.close()
        if server is not None:
            server.cleanup()
    fleet.poll()
    inv = check_invariants(fleet)
    invariants = {"overlaps": inv["overlaps"],
                  "uncovered": final_uncovered,
                  "leaders_max": inv["leaders_max"]}
    timeouts = sum(s["timeouts"] for s in scenarios.values())
    ok = (invariants["overlaps"] == 0 and invariants["uncovered"] == 0 and timeouts == 0
          and (SINGLETON not in args.role_names or invariants["leaders_max"] == 1) and not fleet.failures)
    out = {"bench": "fleet_sim", "members": n, "settle_s": args.settle, "ttl_s": args.ttl,
           "cold_start_s": args.cold_start,
           "shards": args.shards or None, "roles": args.role_names_kinds, "procs": args.procs,
           "scenarios": scenarios, "invariants": invariants, **extra,
           "member_failures": fleet.failures[:10], "load": os.getloadavg(),
           "elapsed_s": round(time.monotonic() - started, 1), "ok": ok}
    print(json.dumps(out), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
