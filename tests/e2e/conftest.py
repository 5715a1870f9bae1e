"""Harness for end-to-end tests of ``supervisor run``: real processes, real etcd.

* :class:`Fleet` writes configs into ``tmp_path``, starts ``supervisor run``
  processes (``python -m etcdvisor.cli run CFG``) with ``ETCDVISOR_ENDPOINTS`` /
  ``ETCDVISOR_MEMBER_ID`` overrides, captures each one's output to a file, and
  signals them (term, kill, pause, resume).
* Children are ``examples/worker.py``; each appends JSON lines (``start`` /
  ``stop``, pid, its environment) to the fleet's ``WORK_RECORD`` file, so tests
  check the history the children recorded themselves.
* A child killed with SIGKILL writes no ``stop`` line: a :class:`LivenessWatcher`
  thread polls the recorded pids and notes the first moment each one was seen
  dead, an upper bound of its end (and the last moment seen alive, a lower one).
* :class:`History` turns records into :class:`Interval` objects and answers
  "which children were alive at time t".

All times are ``time.time()`` (the children record wall-clock time).
Everything started is killed at teardown, even when a test fails.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import yaml

from etcdvisor.coord import open_backend
from etcdvisor.coord.keys import ClusterKeys
from etcdvisor.process.watchdog import find_helper
from etcdvisor.testing import wait_for  # noqa: F401  (re-exported for the e2e tests)

REPO = Path(__file__).resolve().parents[2]
WORKER = REPO / "examples" / "worker.py"
EXAMPLES = REPO / "examples"

TTL = 4  # the smallest TTL the slack rule accepts (ttl*0.95 - 3 - stop_timeout > 0)
STOP_TIMEOUT = "0.5s"


def pid_alive(pid: int, started_at: float | None = None) -> bool:
    """True if ``pid`` runs and is not a zombie (and, given the wall-clock
    time the process recorded at start, was created around then: no pid reuse)."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        if started_at is not None and proc.create_time() > started_at + 1.0:
            return False  # a newer process got the same pid
        return True
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def wait_pids_gone(pids, timeout: float) -> list[int]:
    """Wait until none of ``pids`` is alive; return the ones still alive."""
    deadline = time.monotonic() + timeout
    while True:
        alive = [p for p in pids if pid_alive(p)]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.02)


# --- records ------------------------------------------------------------------------

def read_records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line:
            try:
                records.append(json.loads(line))
            except ValueError:
                pass  # a line being appended right now: picked up next time
    return records


@dataclass
class Interval:
    """One child's life, from its own records."""

    pid: int
    role: str
    member: str
    env: dict
    start: float
    end: float | None  # stop record, else first moment seen dead; None: alive
    end_recorded: bool  # True when the child wrote a stop line

    @property
    def index(self) -> int | None:
        return None if self.env.get("index") is None else int(self.env["index"])

    @property
    def count(self) -> int | None:
        return None if self.env.get("count") is None else int(self.env["count"])

    @property
    def epoch(self) -> int | None:
        return None if self.env.get("epoch") is None else int(self.env["epoch"])

    @property
    def leader(self) -> bool:
        return self.env.get("leader") == "1"

    @property
    def token(self) -> int | None:
        return None if self.env.get("leader_token") is None else int(self.env["leader_token"])

    def alive_at(self, t: float) -> bool:
        return self.start <= t and (self.end is None or t < self.end)

    def overlaps(self, other: Interval) -> bool:
        end_a = float("inf") if self.end is None else self.end
        end_b = float("inf") if other.end is None else other.end
        return self.start < end_b and other.start < end_a


class History:
    def __init__(self, records: list[dict], first_dead: dict[int, float]):
        starts: dict[int, dict] = {}
        stops: dict[int, dict] = {}
        for rec in records:
            (starts if rec["event"] == "start" else stops)[rec["pid"]] = rec
        self.intervals = []
        for pid, rec in sorted(starts.items(), key=lambda kv: kv[1]["t"]):
            stop = stops.get(pid)
            end = stop["t"] if stop else first_dead.get(pid)
            self.intervals.append(Interval(pid=pid, role=rec["role"], member=rec["member_id"],
                                           env=rec, start=rec["t"], end=end,
                                           end_recorded=stop is not None))

    def of(self, role: str | None = None, member: str | None = None) -> list[Interval]:
        return [i for i in self.intervals
                if (role is None or i.role == role) and (member is None or i.member == member)]

    def live_at(self, t: float, role: str | None = None) -> list[Interval]:
        return [i for i in self.of(role) if i.alive_at(t)]

    def live(self, role: str | None = None) -> list[Interval]:
        return [i for i in self.of(role) if i.end is None]


class LivenessWatcher(threading.Thread):
    """Notes when each recorded child that wrote no stop line is first seen dead."""

    def __init__(self, record_path: Path, interval: float = 0.03):
        super().__init__(daemon=True, name="liveness-watcher")
        self.record_path = record_path
        self.interval = interval
        self.first_dead: dict[int, float] = {}
        self.last_alive: dict[int, float] = {}
        self._halt = threading.Event()
        self._lock = threading.Lock()

    def run(self) -> None:
        while not self._halt.is_set():
            self.poll()
            self._halt.wait(self.interval)

    def poll(self) -> None:
        records = read_records(self.record_path)
        stopped = {r["pid"] for r in records if r["event"] == "stop"}
        for rec in records:
            pid = rec["pid"]
            if rec["event"] != "start" or pid in stopped or pid in self.first_dead:
                continue
            now = time.time()
            alive = pid_alive(pid, rec["t"])
            with self._lock:
                if alive:
                    self.last_alive[pid] = now
                else:
                    self.first_dead[pid] = now

    def snapshot(self) -> dict[int, float]:
        with self._lock:
            return dict(self.first_dead)

    def stop(self) -> None:
        self._halt.set()
        self.join(2)


# --- supervisors --------------------------------------------------------------------

class Member:
    """One ``supervisor run`` process."""

    def __init__(self, member_id: str, proc: subprocess.Popen, out_path: Path):
        self.id = member_id
        self.proc = proc
        self.out_path = out_path
        self.exited_at: float | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.out_path.read_text(encoding="utf-8", errors="replace")

    def wait_output(self, text: str, timeout: float) -> str:
        return wait_for(lambda: text in self.output(), timeout, f"{self.id} to log {text!r}")

    def descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def watchdog_pid(self) -> int | None:
        return find_helper(self.pid)

    def signal(self, signum: int) -> float:
        now = time.time()
        self.proc.send_signal(signum)
        return now

    def term(self) -> float:
        return self.signal(signal.SIGTERM)

    def kill(self) -> float:
        """SIGKILL and reap; returns the time of the kill."""
        now = self.signal(signal.SIGKILL)
        self.wait(5)
        return now

    def pause(self) -> float:
        return self.signal(signal.SIGSTOP)

    def resume(self) -> float:
        return self.signal(signal.SIGCONT)

    def wait(self, timeout: float) -> int:
        """Wait for exit; records ``exited_at`` (when the wait returned)."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"supervisor {self.id} did not exit within {timeout}s; output:\n{self.output()}")
        if self.exited_at is None:
            self.exited_at = time.time()
        return code

    def running(self) -> bool:
        return self.proc.poll() is None


class Fleet:
    """Supervisors of one test, on one cluster, sharing one WORK_RECORD file."""

    def __init__(self, tmp_path: Path, etcd_url: str, cluster: str):
        self.dir = tmp_path
        self.etcd_url = etcd_url
        self.cluster = cluster
        self.record_path = tmp_path / "records.jsonl"
        self.members: dict[str, Member] = {}
        self.watcher = LivenessWatcher(self.record_path)
        self.watcher.start()
        self._backend = None

    # configs
    def worker_role(self, type_: str, **keys) -> dict:
        """A role running examples/worker.py that records to this fleet's file."""
        role = {"type": type_, "command": [sys.executable, str(WORKER)],
                "env": {"WORK_RECORD": str(self.record_path), "WORK_INTERVAL": "1000"},
                "stop_timeout": STOP_TIMEOUT}
        role.update(keys)
        return role

    def write_config(self, roles: dict, *, ttl: int = TTL, name: str = "config.yaml", **top) -> Path:
        doc = {"cluster": self.cluster, "etcd": {"endpoints": [self.etcd_url], "timeout": "2s"},
               "member": {"ttl": ttl, "state_dir": str(self.dir / "state")}, "roles": roles, **top}
        path = self.dir / name
        path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
        return path

    # processes
    def start(self, member_id: str, config: Path, *, env: dict | None = None,
              endpoints: str | None = None) -> Member:
        full_env = dict(os.environ, ETCDVISOR_MEMBER_ID=member_id,
                        ETCDVISOR_ENDPOINTS=endpoints or self.etcd_url, PYTHONUNBUFFERED="1")
        full_env.update(env or {})
        out_path = self.dir / f"{member_id}.out"
        with open(out_path, "ab") as out:
            proc = subprocess.Popen([sys.executable, "-m", "etcdvisor.cli", "run", str(config)],
                                    env=full_env, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, cwd=self.dir)
        member = Member(member_id, proc, out_path)
        self.members[member_id] = member
        return member

    def start_many(self, count: int, config: Path, prefix: str = "m") -> list[Member]:
        return [self.start(f"{prefix}{i}", config) for i in range(count)]

    # observations
    def records(self) -> list[dict]:
        return read_records(self.record_path)

    def history(self) -> History:
        self.watcher.poll()
        return History(self.records(), self.watcher.snapshot())

    def backend(self):
        if self._backend is None:
            self._backend = open_backend(self.etcd_url, timeout=5)
        return self._backend

    def member_key(self, member_id: str) -> str:
        return ClusterKeys(self.cluster).member(member_id)

    def role_status(self, member_id: str, role: str) -> dict:
        """What ``member_id``'s member record says about ``role`` ({} before it says anything)."""
        kv = self.backend().get(self.member_key(member_id))
        return json.loads(kv.value)["roles"].get(role, {}) if kv else {}

    def candidates(self, role: str) -> int:
        """How many members campaign in ``role``'s election (the leader included)."""
        return len(self.backend().get_prefix(ClusterKeys(self.cluster).election(role), keys_only=True).kvs)

    def logs(self) -> str:
        return "\n".join(f"--- {m.id} (pid {m.pid}) ---\n{m.output()}" for m in self.members.values())

    # teardown
    def close(self) -> None:
        self.watcher.stop()
        for member in self.members.values():
            if member.running():
                try:
                    member.proc.send_signal(signal.SIGCONT)
                    member.proc.kill()
                    member.proc.wait(5)
                except (OSError, subprocess.TimeoutExpired):
                    pass
        leftovers = [r["pid"] for r in self.records() if r["event"] == "start" and pid_alive(r["pid"], r["t"])]
        for pid in leftovers:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        if self._backend is not None:
            self._backend.close()


@pytest.fixture
def fleet(tmp_path, etcd_url, request):
    cluster = "e2e-" + os.urandom(4).hex()
    fleet = Fleet(tmp_path, etcd_url, cluster)
    yield fleet
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        print(fleet.logs())
    fleet.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.rep_call = report


# --- checks shared by tests ---------------------------------------------------------

def assert_sharded_settled(history: History, t: float, role: str, count: int) -> None:
    """At time ``t`` the live children of ``role`` hold INDEX 0..count-1 exactly
    once, all with COUNT=count and one EPOCH."""
    live = history.live_at(t, role)
    described = [(i.member, i.index, i.count, i.epoch, i.pid) for i in live]
    assert sorted(i.index for i in live) == list(range(count)), described
    assert {i.count for i in live} == {count}, described
    assert len({i.epoch for i in live}) == 1, described
    assert len({i.member for i in live}) == count, described


def assert_no_duplicate_shards(history: History, role: str) -> None:
    """Never two live children of the same (EPOCH, INDEX), nor two children with
    the same EPOCH on one member at once."""
    children = history.of(role)
    for a_pos, a in enumerate(children):
        for b in children[a_pos + 1:]:
            if a.overlaps(b) and a.epoch == b.epoch:
                assert a.index != b.index, f"duplicate INDEX in one epoch: {a} / {b}"
            if a.overlaps(b) and a.member == b.member:
                pytest.fail(f"two children of {role} at once on {a.member}: {a} / {b}")
