"""RotatingFile (child output to a file, rotated by size) and the pump's file path."""

import errno
import logging
import os
import sys
import threading
import time

import pytest

from etcdvisor.process.child import ChildProcess
from etcdvisor.process.logfile import HIGH_WATER, LogFileSpec, RotatingFile, open_confined
from etcdvisor.process.output import MAX_LINE, OutputPump, file_lines
from etcdvisor.process.spawn import ChildSpec


def _spec(tmp_path, max_size=100, backups=3, name="out.log"):
    return LogFileSpec(path=str(tmp_path / name), root=str(tmp_path), max_size=max_size,
                       backups=backups, role="worker")


def _read(path):
    with open(path, "rb") as handle:
        return handle.read()


def _all_files(spec):
    """Oldest first: PATH.<backups> ... PATH.1, PATH (those that exist)."""
    names = [f"{spec.path}.{n}" for n in range(spec.backups, 0, -1)] + [spec.path]
    return [name for name in names if os.path.exists(name)]


def _lines(n, width=10, start=0):
    return [f"{i:0{width - 1}d}\n".encode() for i in range(start, start + n)]


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_rotates_before_a_line_would_pass_max_size_and_keeps_backups(tmp_path):
    spec = _spec(tmp_path, max_size=100, backups=3)
    writer = RotatingFile(spec)
    lines = _lines(55)  # 10 bytes each: 10 lines per file
    for line in lines:
        writer.write(line)
    writer.close()
    files = _all_files(spec)
    assert files == [f"{spec.path}.3", f"{spec.path}.2", f"{spec.path}.1", spec.path]
    assert [os.path.getsize(f) for f in files] == [100, 100, 100, 50]
    # the two oldest files (lines 0..19) were dropped; what is kept is in order, whole lines
    assert b"".join(_read(f) for f in files) == b"".join(lines[20:])
    assert writer.rotations == 5


def test_a_batch_is_split_at_line_boundaries_never_inside_a_line(tmp_path):
    spec = _spec(tmp_path, max_size=64, backups=5)
    writer = RotatingFile(spec)
    lines = [b"x" * n + b"\n" for n in (5, 30, 17, 1, 40, 12, 9, 33, 2, 20)]
    writer.write(b"".join(lines))  # one write, several files
    writer.close()
    files = _all_files(spec)
    assert len(files) > 2
    for name in files:
        data = _read(name)
        assert data.endswith(b"\n") and len(data) <= 64
    assert b"".join(_read(f) for f in files) == b"".join(lines)


def test_a_line_longer_than_max_size_gets_a_file_of_its_own(tmp_path):
    spec = _spec(tmp_path, max_size=10, backups=2)
    writer = RotatingFile(spec)
    writer.write(b"abc\n" + b"y" * 25 + b"\n" + b"z\n")
    writer.close()
    assert [_read(f) for f in _all_files(spec)] == [b"abc\n", b"y" * 25 + b"\n", b"z\n"]


def test_backups_zero_truncates(tmp_path):
    spec = _spec(tmp_path, max_size=20, backups=0)
    writer = RotatingFile(spec)
    for line in _lines(5):
        writer.write(line)
    writer.close()
    assert _all_files(spec) == [spec.path]
    assert _read(spec.path) == b"".join(_lines(5)[4:])  # 2 per file: 0-1, 2-3, then 4


def test_an_existing_file_is_appended_and_counts_towards_max_size(tmp_path):
    spec = _spec(tmp_path, max_size=30, backups=1)
    with open(spec.path, "wb") as handle:
        handle.write(b"old line 1\nold line 2\n")  # 22 bytes
    writer = RotatingFile(spec)
    writer.write(b"new line 1\n")
    writer.close()
    assert _read(f"{spec.path}.1") == b"old line 1\nold line 2\n"
    assert _read(spec.path) == b"new line 1\n"


def test_a_reader_following_by_descriptor_loses_nothing_across_rotations(tmp_path):
    """What `logs --follow` relies on: every byte written before a rename is in the old
    inode, every byte after it in the new one."""
    spec = _spec(tmp_path, max_size=50, backups=1)
    writer = RotatingFile(spec)
    seen = b""
    reader = None
    inode = None
    for line in _lines(40):
        writer.write(line)
        if reader is None:
            reader = open(spec.path, "rb")
            inode = os.fstat(reader.fileno()).st_ino
        seen += reader.read()
        if os.stat(spec.path).st_ino != inode:
            seen += reader.read()
            reader.close()
            reader = open(spec.path, "rb")
            inode = os.fstat(reader.fileno()).st_ino
            seen += reader.read()
    reader.close()
    assert seen == b"".join(_lines(40))


def test_full_disk_drops_whole_lines_and_warns_once_per_minute(tmp_path, caplog):
    clock = FakeClock()
    full = {"on": False}
    real_write = os.write

    def writer(fd, data):
        if full["on"]:
            # a partial write, then the disk is full: the half line must be cut back
            real_write(fd, bytes(data[:3]))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    spec = _spec(tmp_path, max_size=10_000, backups=1)
    rotating = RotatingFile(spec, clock=clock, writer=writer)
    caplog.set_level(logging.INFO, logger="etcdvisor")
    rotating.write(b"before\n", "worker[0]")
    full["on"] = True
    for _ in range(50):
        rotating.write(b"lost line\n", "worker[0]")
        clock.now += 1.0  # 50 s: still within the first minute
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "No space left on device" in warnings[0].getMessage()
    assert spec.path in warnings[0].getMessage() and "worker[0]" in warnings[0].getMessage()
    clock.now += 11.0  # past the minute: one more line
    rotating.write(b"lost line\n", "worker[0]")
    rotating.write(b"lost line\n", "worker[0]")
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 2
    full["on"] = False
    rotating.write(b"after\n", "worker[0]")
    rotating.close()
    assert _read(spec.path) == b"before\nafter\n"  # no half line left behind
    assert rotating.dropped_total == 52 * len(b"lost line\n")
    assert any("again" in r.getMessage() and "520 bytes" in r.getMessage() for r in caplog.records)


def test_unopenable_file_is_reported_and_retried(tmp_path, caplog):
    clock = FakeClock()
    failing = {"on": True}

    def opener(spec):
        if failing["on"]:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
        return open_confined(spec)

    spec = _spec(tmp_path)
    rotating = RotatingFile(spec, clock=clock, opener=opener)
    caplog.set_level(logging.WARNING, logger="etcdvisor")
    rotating.write(b"a\n")
    rotating.write(b"b\n")
    assert len(caplog.records) == 1 and "cannot open" in caplog.records[0].getMessage()
    failing["on"] = False
    rotating.write(b"c\n")
    rotating.close()
    assert _read(spec.path) == b"c\n"


def test_a_file_resolving_outside_the_root_is_refused(tmp_path, caplog):
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", root / "logs")
    spec = LogFileSpec(path=str(root / "logs" / "out.log"), root=str(root), max_size=100, backups=1)
    with pytest.raises(PermissionError, match="outside the role's working directory"):
        open_confined(spec)
    caplog.set_level(logging.WARNING, logger="etcdvisor")
    RotatingFile(spec).write(b"x\n")
    assert not os.path.exists(tmp_path / "elsewhere" / "out.log")
    assert "outside" in caplog.records[0].getMessage()


def test_file_lines_bounds_long_lines_and_keeps_partials():
    assert file_lines(b"", b"a\nb\nc") == (b"a\nb\n", b"c")
    assert file_lines(b"c", b"d\ne\n") == (b"cd\ne\n", b"")
    assert file_lines(b"", b"no newline") == (b"", b"no newline")
    long = b"x" * (MAX_LINE + 10)
    out, pending = file_lines(long[:MAX_LINE], long[MAX_LINE:] + b"\nz\n")
    assert out == b"x" * MAX_LINE + b"\n" + b"x" * 10 + b"\nz\n" and pending == b""
    out, pending = file_lines(b"y" * MAX_LINE, b"y" * 5)
    assert out == b"y" * MAX_LINE + b"\n" and pending == b"y" * 5
    assert file_lines(b"", b"raw\r\n\xff\xfe\n") == (b"raw\r\n\xff\xfe\n", b"")


def _wait(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def test_pump_writes_children_raw_lines_to_shared_file_without_mixing(tmp_path):
    """Two children appending to one file: every line whole (no mixing inside a line),
    partial line at EOF completed, stderr to its own file, nothing on the sinks."""
    spec = LogFileSpec(path=str(tmp_path / "w.log"), root=str(tmp_path), max_size=8 << 20, backups=2)
    err = LogFileSpec(path=str(tmp_path / "w.err"), root=str(tmp_path), max_size=8 << 20, backups=2)
    code = ("import sys\n"
            "tag = sys.argv[1]\n"
            "for i in range(2000):\n"
            "    sys.stdout.write(f'{tag} {i} ' + 'p' * 300 + '\\n')\n"
            "sys.stdout.write('tail-' + tag)\n"
            "sys.stderr.write('err-' + tag + '\\n')\n")
    pump = OutputPump(stdout=open(os.devnull, "wb"), stderr=open(os.devnull, "wb"))
    pump.start()
    children = []
    for tag in ("A", "B"):
        child = ChildProcess(ChildSpec(name=f"w[{tag}]", argv=(sys.executable, "-c", code, tag),
                                       env=dict(os.environ), stdout_file=spec, stderr_file=err),
                             output=pump)
        child.start()
        children.append(child)
    assert _wait(lambda: all(c.poll(time.monotonic()) or c.returncode is not None for c in children))
    assert _wait(lambda: pump.open_streams == 0)
    pump.stop()
    lines = _read(spec.path).split(b"\n")
    assert lines.pop() == b""
    for tag in (b"A", b"B"):
        mine = [line for line in lines if line.startswith(tag + b" ")]
        assert mine == [tag + b" %d " % i + b"p" * 300 for i in range(2000)]
        assert b"tail-" + tag in lines
    assert len(lines) == 4002
    assert sorted(_read(err.path).split(b"\n")) == [b"", b"err-A", b"err-B"]
    assert pump._files == {}  # both writers closed once their children are gone


class _Sink:
    def __init__(self):
        self.data = b""

    def write(self, data):
        self.data += data
        return len(data)

    def flush(self):
        pass


def test_a_slow_disk_holds_up_only_the_children_writing_to_that_file(tmp_path):
    """The writer of one file is stuck (a disk that does not answer): its child blocks
    once the pipe and the sink's queue are full, another child's output still flows, and
    when the disk answers again every line of the blocked child arrives, whole and in order."""
    stuck = threading.Event()
    released = threading.Event()

    def slow_write(fd, data):
        stuck.set()
        released.wait(30)
        return os.write(fd, data)

    spec = LogFileSpec(path=str(tmp_path / "slow.log"), root=str(tmp_path), max_size=64 << 20, backups=1)
    out = _Sink()
    pump = OutputPump(stdout=out, stderr=open(os.devnull, "wb"), file_writer=slow_write)
    pump.start()
    writer = ("import sys\n"
              "for i in range(200000):\n"
              "    sys.stdout.write('%08d ' % i + 'w' * 90 + '\\n')\n")  # ~19 MiB
    slow = ChildProcess(ChildSpec(name="slow", argv=(sys.executable, "-c", writer), env=dict(os.environ),
                                  stdout_file=spec), output=pump)
    slow.start()
    assert stuck.wait(10)
    other = ChildProcess(ChildSpec(name="other", argv=(sys.executable, "-c", "for i in range(500): print(i)"),
                                   env=dict(os.environ)), output=pump)
    other.start()
    try:
        assert _wait(lambda: out.data.count(b"\n") == 500), out.data[-200:]
        assert other.poll(time.monotonic()) is not None or _wait(lambda: other.poll(time.monotonic()) is not None)
        assert slow.poll(time.monotonic()) is None  # blocked on its full pipe, not lost output
        sink = pump._files[spec.path][0]
        assert sink._queued <= HIGH_WATER + 2 * MAX_LINE  # memory stays bounded: pipe left unread
    finally:
        released.set()
    assert _wait(lambda: slow.poll(time.monotonic()) is not None, 30)
    assert _wait(lambda: pump.open_streams == 0, 30)
    pump.stop()
    data = _read(spec.path)
    assert data == b"".join(b"%08d " % i + b"w" * 90 + b"\n" for i in range(200000))
