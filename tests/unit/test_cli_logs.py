"""`supervisor logs`: which files, and following them across rotations (no processes)."""

import os
import threading
import time

import pytest

from etcdvisor.cli.role_logs import Follower, UsageError, follow, role_log_sources
from etcdvisor.process.logfile import LogFileSpec, RotatingFile


def _lines(start, stop):
    return b"".join(b"line %06d\n" % i for i in range(start, stop))


@pytest.mark.parametrize("writes_per_read", [1, 3, 25])
def test_follower_sees_every_line_once_across_rotations_even_when_behind(tmp_path, writes_per_read):
    spec = LogFileSpec(path=str(tmp_path / "a.log"), root=str(tmp_path), max_size=100, backups=30)
    writer = RotatingFile(spec)
    follower = Follower(spec.path)
    writer.write(_lines(0, 1))
    seen = follower.read(follow=True)  # the reader starts with the current file
    for i in range(1, 300, writes_per_read):
        for j in range(i, min(i + writes_per_read, 300)):
            writer.write(_lines(j, j + 1))  # 12 bytes: a rotation every 8 lines
        while data := follower.read(follow=True):
            seen += data
    assert writer.rotations > 30
    assert seen == _lines(0, 300)


def test_follower_after_truncation_starts_over(tmp_path):
    spec = LogFileSpec(path=str(tmp_path / "a.log"), root=str(tmp_path), max_size=50, backups=0)
    writer = RotatingFile(spec)
    follower = Follower(spec.path)
    writer.write(_lines(0, 4))  # 48 bytes
    assert follower.read(follow=True) == _lines(0, 4)
    writer.write(_lines(4, 5))  # truncates first: the file is shorter than what was read
    assert follower.read(follow=True) == b""
    assert follower.read(follow=True) == _lines(4, 5)


def _config(tmp_path, role):
    path = tmp_path / "c.yaml"
    path.write_text("cluster: c\nmember: {id: m7, ttl: 10}\netcd: {endpoints: memory://c}\n"
                    f"roles:\n  w: {role}\n  plain: {{type: job, command: [x]}}\n")
    return str(path)


def test_sources_stdout_first_with_index_placeholder_scanned_by_index(tmp_path):
    config = _config(tmp_path, "{type: sharded, command: [x], processes: 3,"
                               " stdout: {file: 'logs/{role}-{member}-{index}.log'}, stderr: {file: logs/err}}")
    logs = tmp_path / "logs"
    logs.mkdir()
    for name in ("w-m7-10.log", "w-m7-2.log", "w-m7-x.log", "w-m7-2.log.1", "other.log"):
        (logs / name).write_text("x\n")
    sources = role_log_sources(config, "w", None)
    assert sources.scan() == [str(logs / "w-m7-2.log"), str(logs / "w-m7-10.log"), str(logs / "err")]
    assert role_log_sources(config, "w", 10).scan() == [str(logs / "w-m7-10.log"), str(logs / "err")]


def test_sources_errors_are_usage_errors(tmp_path):
    config = _config(tmp_path, "{type: job, command: [x], stdout: {file: out.log}, stderr: {file: out.log}}")
    assert role_log_sources(config, "w", None).scan() == [str(tmp_path / "out.log")]  # one file, once
    with pytest.raises(UsageError, match="no role 'nope'"):
        role_log_sources(config, "nope", None)
    with pytest.raises(UsageError, match="role plain has no log file"):
        role_log_sources(config, "plain", None)
    with pytest.raises(UsageError, match="--index must be >= 0"):
        role_log_sources(config, "w", -1)


def test_follow_prints_then_waits_and_stops_when_asked(tmp_path):
    config = _config(tmp_path, "{type: job, command: [x], stdout: {file: out.log, max_size: 1KiB, backups: 2}}")
    sources = role_log_sources(config, "w", None)

    class Out:
        def __init__(self):
            self.data = b""

        def write(self, data):
            self.data += data

        def flush(self):
            pass

    out, stop = Out(), threading.Event()
    thread = threading.Thread(target=follow, args=(sources, out, stop))
    thread.start()  # the file does not exist yet: it is waited for
    spec = LogFileSpec(path=str(tmp_path / "out.log"), root=str(tmp_path), max_size=1024, backups=2)
    writer = RotatingFile(spec)
    for i in range(300):
        writer.write(_lines(i, i + 1))
        if i % 50 == 0:
            stop.wait(0.05)
    deadline = threading.Event()
    for _ in range(200):
        if out.data == _lines(0, 300):
            break
        deadline.wait(0.05)
    stop.set()
    thread.join(5)
    assert not thread.is_alive()
    assert writer.rotations >= 3
    assert out.data == _lines(0, 300)


def test_a_follower_that_waited_for_the_file_prints_the_backups_rotated_before_it_looked(tmp_path):
    old = tmp_path / "a.log.3"
    old.write_bytes(b"from an earlier run\n")
    os.utime(old, (1000, 1000))  # long before the follower started waiting
    follower = Follower(str(tmp_path / "a.log"), waited_since=time.time() - 1)
    assert follower.read(follow=True) == b""  # nothing there yet
    spec = LogFileSpec(path=str(tmp_path / "a.log"), root=str(tmp_path), max_size=30, backups=5)
    writer = RotatingFile(spec)
    writer.write(_lines(0, 6))  # 12 bytes a line: three files, two of them rotated already
    seen = b""
    while data := follower.read(follow=True):
        seen += data
    assert seen == _lines(0, 6)


def test_a_follower_that_waited_sees_each_line_once_when_the_file_rotates_as_it_opens_it(tmp_path):
    """The file appears, the follower opens it, and it rotates before the follower looks
    for backups written while it waited: the opened file (now the newest backup) is read
    once, through the handle, then the new file (a slow reader on a loaded machine)."""
    spec = LogFileSpec(path=str(tmp_path / "a.log"), root=str(tmp_path), max_size=30, backups=5)
    writer = RotatingFile(spec)
    writer.write(_lines(0, 4))  # two rotated, one current: a.log.2, a.log.1, a.log
    follower = Follower(spec.path, waited_since=time.time() - 1)
    assert follower._open()
    writer.write(_lines(4, 6))  # the opened file becomes a.log.1, and a new one starts
    seen = b""
    while data := follower.read(follow=True):
        seen += data
    assert seen == _lines(0, 6)


def test_sources_with_a_generated_member_id_match_any_member(tmp_path, monkeypatch):
    path = tmp_path / "c.yaml"
    path.write_text("cluster: c\netcd: {endpoints: memory://c}\nroles:\n"
                    "  w: {type: job, command: [x], stdout: {file: 'logs/{member}.log'}}\n")
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "host-1-3f9a2c.log").write_text("x\n")
    monkeypatch.delenv("ETCDVISOR_MEMBER_ID", raising=False)
    assert role_log_sources(str(path), "w", None).scan() == [str(tmp_path / "logs" / "host-1-3f9a2c.log")]
