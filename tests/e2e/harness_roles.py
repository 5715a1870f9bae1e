"""Helpers for the cron / job / topic / status end-to-end tests.

The supervisors themselves are started with the ``fleet`` fixture of
``tests/e2e/conftest.py``. What this module adds is a *recording child*: a
tiny Python script (written into the test's directory, run with ``-S`` so it
starts fast) that appends one JSON line per event to the file named by
``ROLE_RECORD``:

* ``{"event": "start", "pid", "t", "role", "member_id", "scheduled_time",
  "leader_token", "message_id", "attempt", "topic", ...}`` when it starts;
* ``{"event": "end", ..., "exit": code}`` just before it exits on its own
  (a child killed with its supervisor writes no end line).

Each line is written with one ``write(2)`` on a descriptor opened with
``O_APPEND``, so lines of concurrent children never interleave. Knobs, from
the role's ``env``: ``CHILD_SLEEP`` (seconds to sleep between the two
lines), ``CHILD_EXIT`` (exit status), ``EXIT_BY_ATTEMPT`` (``"3,3,0"``: the exit
status of attempt 1, 2, 3..., the last one repeating), ``STDIN_DIR`` (write the stdin bytes to
``STDIN_DIR/<MESSAGE_ID or pid>.bin`` before the start line).

All times are wall-clock ``time.time()`` of the children.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from datetime import datetime
from pathlib import Path

import pytest

from .conftest import STOP_TIMEOUT, pid_alive, read_records

CHILD_SOURCE = r'''
import json, os, signal, sys, time

FIELDS = ("ROLE", "MEMBER_ID", "SCHEDULED_TIME", "LEADER", "LEADER_TOKEN", "MESSAGE_ID",
          "ATTEMPT", "TOPIC", "INDEX", "COUNT", "EPOCH")


def record(event, **extra):
    entry = {"event": event, "pid": os.getpid(), "t": time.time(),
             **{name.lower(): os.environ.get(name) for name in FIELDS}, **extra}
    fd = os.open(os.environ["ROLE_RECORD"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(entry) + "\n").encode())
    finally:
        os.close(fd)


def on_term(signum, frame):  # RECORD_SIGTERM=1: an exact end time for stopped runs
    record("stopped")
    os._exit(143)


if os.environ.get("RECORD_SIGTERM"):
    signal.signal(signal.SIGTERM, on_term)
stdin_dir = os.environ.get("STDIN_DIR")
if stdin_dir:
    data = sys.stdin.buffer.read()
    name = os.environ.get("MESSAGE_ID") or str(os.getpid())
    with open(os.path.join(stdin_dir, name + ".bin"), "wb") as fh:
        fh.write(data)
record("start")
pause = float(os.environ.get("CHILD_SLEEP") or 0)
if pause:
    time.sleep(pause)
code = int(os.environ.get("CHILD_EXIT") or 0)
by_attempt = os.environ.get("EXIT_BY_ATTEMPT")  # "3,3,0": exit 3 on attempts 1 and 2, then 0
if by_attempt:
    codes = [int(c) for c in by_attempt.split(",")]
    code = codes[min(int(os.environ.get("ATTEMPT") or 1), len(codes)) - 1]
if os.environ.get("INDEX") is not None and os.environ.get("INDEX") == os.environ.get("EXIT_IF_INDEX"):
    code = 1
record("end", exit=code)
sys.exit(code)
'''


class Recorder:
    """The recording child of one test and the records it left."""

    def __init__(self, directory: Path):
        self.dir = directory
        self.script = directory / "role_child.py"
        self.script.write_text(CHILD_SOURCE, encoding="utf-8")
        self.path = directory / "roles.jsonl"
        self.stdin_dir = directory / "stdin"
        self.stdin_dir.mkdir(exist_ok=True)

    def role(self, type_: str, *, sleep: float = 0.0, env: dict | None = None, **keys) -> dict:
        """A role whose child is the recording script."""
        role_env = {"ROLE_RECORD": str(self.path), "CHILD_SLEEP": str(sleep)}
        role_env.update(env or {})
        role = {"type": type_, "command": [sys.executable, "-S", str(self.script)],
                "env": role_env, "stop_timeout": STOP_TIMEOUT}
        role.update(keys)
        return role

    def records(self, role: str | None = None, event: str | None = None) -> list[dict]:
        return [r for r in read_records(self.path)
                if (role is None or r.get("role") == role) and (event is None or r.get("event") == event)]

    def starts(self, role: str) -> list[dict]:
        return self.records(role, "start")

    def ends(self, role: str) -> list[dict]:
        return self.records(role, "end")

    def kill_leftovers(self) -> None:
        """Teardown: no recorded child may outlive the test."""
        for rec in self.records(event="start"):
            if pid_alive(rec["pid"], rec["t"]):
                try:
                    os.kill(rec["pid"], signal.SIGKILL)
                except OSError:
                    pass


def duplicates(values) -> dict:
    """Values that occur more than once, with their counts."""
    return {value: n for value, n in Counter(values).items() if n > 1}


def tick_time(record: dict) -> float:
    """SCHEDULED_TIME of a cron child's record as a Unix time."""
    return datetime.fromisoformat(record["scheduled_time"]).timestamp()


def missing_ticks(times: list[float], period: float) -> list[float]:
    """Ticks of a ``period``-second schedule between the first and last of
    ``times`` that are not in ``times``."""
    if not times:
        return []
    first, last = min(times), max(times)
    seen = {round(t, 3) for t in times}
    count = int(round((last - first) / period))
    expected = [round(first + k * period, 3) for k in range(count + 1)]
    return [t for t in expected if t not in seen]


def cli(*args: str, env: dict | None = None, stdin: bytes | None = None,
        timeout: float = 30) -> subprocess.CompletedProcess:
    """Run ``supervisor ARGS`` as a real subprocess (bytes in, bytes out)."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "etcdvisor.cli", *args], input=stdin,
                          capture_output=True, env=full_env, timeout=timeout)


def status_json(config: Path) -> dict:
    result = cli("status", "-c", str(config), "--json")
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return json.loads(result.stdout)


def poll_status(config: Path) -> dict | None:
    """``status --json`` for polling loops: None while no member has joined yet
    (``status`` of a cluster without members is an error, exit 1)."""
    result = cli("status", "-c", str(config), "--json")
    if result.returncode != 0:
        assert b"has no members" in result.stderr, result.stderr.decode(errors="replace")
        return None
    return json.loads(result.stdout)


@pytest.fixture
def recorder(fleet):
    """The recording child for this test (in the fleet's directory); any child
    still alive at teardown is killed."""
    rec = Recorder(fleet.dir)
    yield rec
    for member in fleet.members.values():  # supervisors first: they would restart children
        if member.running():
            member.proc.send_signal(signal.SIGCONT)
            member.proc.kill()
            member.proc.wait(5)
    rec.kill_leftovers()
