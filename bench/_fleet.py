"""The fleet and child-record helpers of ``supervisor_bench.py``: ``supervisor run``
processes sharing one etcd, one cluster and one record file, and the /proc clock
that tells when a child was forked and when it was reaped."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil
import yaml

REPO = Path(__file__).resolve().parents[1]
WORKER = REPO / "examples" / "worker.py"
SH_WORKER = REPO / "bench" / "sh_worker.sh"
IDLE_CHILD = ["sleep", "1000000"]


class BenchTimeout(RuntimeError):
    pass


def read_records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass  # being written
    return out


def live_children(path: Path, role: str) -> list[dict]:
    """Start records of children of ``role`` that have neither a stop record
    nor died (a SIGKILLed supervisor's children write no stop line)."""
    records = read_records(path)
    stopped = {r["pid"] for r in records if r["event"] == "stop"}
    live = []
    for rec in records:
        if rec["event"] == "start" and rec["role"] == role and rec["pid"] not in stopped:
            try:
                if psutil.Process(rec["pid"]).status() != psutil.STATUS_ZOMBIE:
                    live.append(rec)
            except psutil.NoSuchProcess:
                pass
    return live


class Fleet:
    """``supervisor run`` processes sharing one etcd, one cluster, one record file."""

    def __init__(self, workdir: Path, etcd_url: str, name: str):
        self.dir = workdir / name
        self.dir.mkdir()
        self.etcd_url = etcd_url
        self.cluster = f"bench-{name}-{os.urandom(3).hex()}"
        self.record = self.dir / "records.jsonl"
        self.procs: dict[str, subprocess.Popen] = {}

    def config(self, roles: dict, ttl: int) -> Path:
        # a generous per-call timeout: on a loaded 2-core machine a new connection can
        # take seconds, and a supervisor that cannot reach etcd at start-up exits
        doc = {"cluster": self.cluster, "etcd": {"endpoints": [self.etcd_url], "timeout": "15s"},
               "member": {"ttl": ttl, "state_dir": str(self.dir / "state")}, "roles": roles}
        path = self.dir / "config.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path

    def worker_role(self, type_: str, child: str = "python", **keys) -> dict:
        """``child``: "python" (examples/worker.py) or "sh" (bench/sh_worker.sh: the same
        records without an interpreter start-up, to time the supervisors, not the children)."""
        command = ["/bin/sh", str(SH_WORKER)] if child == "sh" else [sys.executable, str(WORKER)]
        return {"type": type_, "command": command,
                "env": {"WORK_RECORD": str(self.record), "WORK_INTERVAL": "1000"},
                "stop_timeout": "0.5s", **keys}

    def start(self, member_id: str, config: Path) -> subprocess.Popen:
        env = dict(os.environ, ETCDVISOR_ENDPOINTS=self.etcd_url, ETCDVISOR_MEMBER_ID=member_id)
        with open(self.dir / f"{member_id}.out", "ab") as out:
            proc = subprocess.Popen([sys.executable, "-m", "etcdvisor.cli", "run", str(config)],
                                    env=env, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
        self.procs[member_id] = proc
        return proc

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for rec in read_records(self.record):  # children of killed supervisors, if any
            if rec["event"] == "start":
                try:
                    psutil.Process(rec["pid"]).kill()
                except psutil.Error:
                    pass


def _wait_reaped(pid: int, timeout: float) -> float:
    """Poll until ``pid`` is gone (reaped: a zombie still answers signal 0);
    return when, to within the polling interval."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return time.time()
        time.sleep(0.002)
    return float("nan")


def fork_time(pid: int) -> float:
    """Wall-clock time ``pid`` was forked: its /proc start time (clock ticks
    since boot) shifted by an offset calibrated on children forked here, since
    the kernel's boot time is only given to the second."""
    try:
        created = psutil.Process(pid).create_time()
    except psutil.Error:
        return float("nan")
    return created + _fork_clock_offset()


_OFFSET: list[float] = []


def _fork_clock_offset() -> float:
    if not _OFFSET:
        samples = []
        for _ in range(7):
            before = time.time()
            child = subprocess.Popen(["sleep", "0.05"])
            after = time.time()
            samples.append((before + after) / 2 - psutil.Process(child.pid).create_time())
            child.wait()
        _OFFSET.append(statistics.median(samples))
    return _OFFSET[0]
