"""Shared by the bench scripts that drive real ``supervisor run`` processes.

:class:`BenchFleet` starts a private etcd (``etcdvisor.testing.EtcdServer``),
writes a config into a temporary directory, starts supervisors with
``ETCDVISOR_MEMBER_ID`` overrides, and timestamps every line they log on
arrival (the log lines carry no time of their own). Everything it started
is stopped by :meth:`close`, also after an error.

Children record themselves with :data:`RECORD_CHILD`: one JSON line
``{"t", "pid", "member", "message_id", "scheduled_time"}`` appended with one
``write(2)`` on an ``O_APPEND`` descriptor, so concurrent children never
interleave.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

from etcdvisor.coord import open_backend
from etcdvisor.status import gather
from etcdvisor.testing import EtcdServer

RECORD_CHILD = (
    "import json, os, time\n"
    "line = json.dumps({'t': time.time(), 'pid': os.getpid(), 'member': os.environ.get('MEMBER_ID'),"
    " 'message_id': os.environ.get('MESSAGE_ID'), 'scheduled_time': os.environ.get('SCHEDULED_TIME')})\n"
    "fd = os.open(os.environ['BENCH_RECORD'], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)\n"
    "os.write(fd, (line + '\\n').encode())\n"
)


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))]


class BenchFleet:
    def __init__(self, name: str):
        self.dir = Path(tempfile.mkdtemp(prefix=f"etcdvisor-{name}-"))
        self.cluster = f"bench-{os.urandom(3).hex()}"
        self.record_path = self.dir / "records.jsonl"
        self.server = EtcdServer(name=f"bench-{name}").start()
        self.backend = open_backend(self.server.url, timeout=5)
        self.procs: list[subprocess.Popen] = []
        self.lines: list[tuple[float, str]] = []  # (arrival time.time(), line)
        self._lock = threading.Lock()

    def record_command(self) -> list[str]:
        return [sys.executable, "-S", "-c", RECORD_CHILD]

    def write_config(self, roles: dict, ttl: int = 10) -> Path:
        doc = {"cluster": self.cluster, "etcd": {"endpoints": [self.server.url]},
               "member": {"ttl": ttl, "state_dir": str(self.dir / "state")}, "roles": roles}
        path = self.dir / "config.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
        return path

    def start(self, count: int, config: Path) -> None:
        for n in range(count):
            env = dict(os.environ, ETCDVISOR_MEMBER_ID=f"b{n}", PYTHONUNBUFFERED="1")
            proc = subprocess.Popen([sys.executable, "-m", "etcdvisor.cli", "run", str(config)],
                                    env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, cwd=self.dir)
            self.procs.append(proc)
            threading.Thread(target=self._pump, args=(proc,), daemon=True).start()

    def _pump(self, proc: subprocess.Popen) -> None:
        for raw in proc.stdout:
            with self._lock:
                self.lines.append((time.time(), raw.decode("utf-8", "replace").rstrip()))

    def log_lines(self) -> list[tuple[float, str]]:
        with self._lock:
            return list(self.lines)

    def wait_roles(self, role: str, members: int, timeout: float) -> bool:
        """Until ``members`` member records report ``role`` (its runner started)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            doc = gather(self.backend, self.cluster)
            if len([m for m in doc["members"] if role in m["roles"]]) >= members:
                return True
            time.sleep(0.1)
        return False

    def records(self) -> list[dict]:
        if not self.record_path.exists():
            return []
        out = []
        for line in self.record_path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.backend.close()
        self.server.cleanup()
        shutil.rmtree(self.dir, ignore_errors=True)
