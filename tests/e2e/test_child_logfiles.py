"""e2e (issue 19, section 3): child output to files with rotation, and ``supervisor logs``.

Real ``supervisor run`` processes on real etcd:

* a child writes 200 MiB through the output pump into a file with ``max_size: 10MiB,
  backups: 3``: the files kept hold the last ~40 MiB, every line whole and in order with
  no gap, no file past 10 MiB, and the child was never held up for long (it reports its
  own writing time); the supervisor's own lines are JSON (``log.format: json``) while the
  file gets the raw lines;
* ``supervisor logs ROLE --follow`` started before the member follows the file across
  many rotations and prints every line exactly once; ``supervisor logs ROLE`` prints the
  current file; an unknown role and a role without a file are one line and exit 2.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from .conftest import wait_for
from .harness_roles import cli

pytestmark = [pytest.mark.etcd]

LINE = 128  # bytes per line of the big writer
TOTAL = 200 * 1024 * 1024
BIG_WRITER = r"""
import sys, time
n = int(sys.argv[1])
pads = [bytes([97 + k]) * 114 for k in range(26)]
out = sys.stdout.buffer
started = time.monotonic()
batch = []
for i in range(n):
    batch.append(b"%012d " % i + pads[i % 26] + b"\n")
    if len(batch) == 4096:
        out.write(b"".join(batch))
        batch = []
out.write(b"".join(batch))
out.flush()
sys.stderr.write("wrote %d lines in %.2fs\n" % (n, time.monotonic() - started))
sys.stderr.flush()
"""


def _check_line(line: bytes, expected: int) -> None:
    assert len(line) == LINE - 1, f"line {expected} has {len(line)} bytes: {line[:40]!r}"
    assert line[:12] == b"%012d" % expected, f"expected line {expected}, got {line[:20]!r}"
    assert line[13:] == bytes([97 + expected % 26]) * 114, f"line {expected} is damaged"


def test_200_mib_through_a_rotating_file(fleet):
    lines = TOTAL // LINE
    role = {"type": "job", "command": [sys.executable, "-c", BIG_WRITER, str(lines)],
            "restart": "never", "stop_timeout": "0.5s",
            "stdout": {"file": "out/{role}.log", "max_size": "10MiB", "backups": 3}}
    member = fleet.start("m0", fleet.write_config({"big": role}, log={"format": "json"}))
    done = wait_for(lambda: next((json.loads(x) for x in member.output().splitlines()
                                  if x.startswith("{") and "wrote " in x), None), 60, "the writer to finish")
    assert done["role"] == "big" and done["stream"] == "stderr"  # inherit: JSON lines
    seconds = float(done["msg"].split(" in ")[1].rstrip("s"))
    assert seconds < 30, f"the child took {seconds}s to write 200 MiB: held up by the supervisor"
    path = fleet.dir / "out" / "big.log"
    last = b"%012d " % (lines - 1)

    def complete():
        with open(path, "rb") as handle:
            handle.seek(max(0, os.path.getsize(path) - LINE))
            return handle.read().startswith(last)

    wait_for(complete, 30, "the last line in the file")
    files = [fleet.dir / "out" / name for name in ("big.log.3", "big.log.2", "big.log.1", "big.log")]
    assert not (fleet.dir / "out" / "big.log.4").exists()
    sizes = [f.stat().st_size for f in files]
    limit = 10 * 1024 * 1024
    assert all(limit - LINE < size <= limit for size in sizes[:3]), sizes  # full backups
    assert 0 < sizes[3] <= limit
    kept = sum(sizes) // LINE
    assert sum(sizes) % LINE == 0
    expected = lines - kept
    for name in files:
        with open(name, "rb") as handle:
            data = handle.read()
        assert data.endswith(b"\n"), f"{name} ends inside a line"
        for line in data[:-1].split(b"\n"):
            _check_line(line, expected)
            expected += 1
    assert expected == lines
    assert b"big| " not in path.read_bytes()[:LINE * 4]  # raw lines, no prefix
    assert not any("cannot write" in x for x in member.output().splitlines())


TICKER = r"""
import sys, time
for i in range(300):
    sys.stdout.write("tick %06d %s\n" % (i, "t" * 80))
    sys.stdout.flush()
    time.sleep(0.005)
sys.stdout.write("END\n")
sys.stdout.flush()
time.sleep(600)
"""


def test_logs_prints_and_follows_across_rotations(fleet):
    roles = {
        "ticker": {"type": "singleton", "command": [sys.executable, "-c", TICKER], "stop_timeout": "0.5s",
                   "stdout": {"file": "logs/{role}-{member}.log", "max_size": "1KiB", "backups": 100}},
        "plain": {"type": "singleton", "command": [sys.executable, "-c", "import time; time.sleep(600)"],
                  "stop_timeout": "0.5s"},
    }
    config = fleet.write_config(roles)
    env = dict(os.environ, ETCDVISOR_MEMBER_ID="m0")
    follow_out = fleet.dir / "follow.out"
    with open(follow_out, "wb") as out:  # started first: it waits for the file to appear
        follower = subprocess.Popen([sys.executable, "-m", "etcdvisor.cli", "logs", "ticker", "-c", str(config),
                                     "--follow"], stdout=out, stderr=subprocess.PIPE, env=env)
    try:
        fleet.start("m0", config)
        expected = b"".join(b"tick %06d %s\n" % (i, b"t" * 80) for i in range(300)) + b"END\n"
        wait_for(lambda: follow_out.read_bytes().endswith(b"END\n"), 60, "the follower to print END")
        follower.send_signal(signal.SIGINT)
        assert follower.wait(10) == 0
        assert follow_out.read_bytes() == expected  # every line once, in order, across rotations
    finally:
        if follower.poll() is None:
            follower.kill()
    path = fleet.dir / "logs" / "ticker-m0.log"
    assert (fleet.dir / "logs" / "ticker-m0.log.20").exists()  # it did rotate, many times
    printed = cli("logs", "ticker", "-c", str(config), env={"ETCDVISOR_MEMBER_ID": "m0"})
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout == path.read_bytes() and printed.stdout.endswith(b"END\n")
    for args, reason in ((("plain",), b"role plain has no log file"), (("nosuch",), b"no role 'nosuch'")):
        result = cli("logs", *args, "-c", str(config))
        assert result.returncode == 2
        assert result.stdout == b"" and result.stderr.count(b"\n") == 1 and reason in result.stderr
    started = time.monotonic()
    assert cli("logs", "ticker", "-c", str(config), "--index", "-3").returncode == 2
    assert time.monotonic() - started < 30


FULL_DISK_WRITER = r"""
import sys
for i in range(100000):
    sys.stdout.write("line %06d of a child whose log file is on a full disk\n" % i)
sys.stdout.flush()
sys.stderr.write("all written\n")
"""


def test_a_full_disk_is_reported_once_and_never_stops_the_child(fleet):
    """/dev/full answers every write with ENOSPC, as a full disk does (the role's cwd is
    /dev, so the file stays inside it)."""
    role = {"type": "job", "command": [sys.executable, "-c", FULL_DISK_WRITER], "restart": "never",
            "stop_timeout": "0.5s", "cwd": "/dev", "stdout": {"file": "full"}}
    member = fleet.start("m0", fleet.write_config({"filler": role}))
    wait_for(lambda: "filler| all written" in member.output(), 60, "the child to write everything")
    wait_for(lambda: any(w in member.output() for w in ("filler: exited", "job succeeded")), 30,
             "the job to end")
    warnings = [x for x in member.output().splitlines() if "cannot write /dev/full" in x]
    assert len(warnings) == 1, warnings
    assert " WARNING " in warnings[0] and "No space left on device" in warnings[0]
    assert "(output of filler)" in warnings[0] and "the child keeps running" in warnings[0]
