"""OutputPump: prefixes, partial lines, long lines, binary garbage, EOF, one thread."""

import os
import sys
import threading
import time

from etcdvisor.process.child import ChildProcess
from etcdvisor.process.output import MAX_LINE, OutputPump
from etcdvisor.process.spawn import ChildSpec


class Sink:
    """A binary stream that records writes (the pump flushes after each line)."""

    def __init__(self):
        self._lock = threading.Lock()
        self.data = b""
        self.writes = 0

    def write(self, data):
        with self._lock:
            self.data += data
            self.writes += 1
        return len(data)

    def flush(self):
        pass


def _run(pump, name, code, *args):
    child = ChildProcess(ChildSpec(name=name, argv=(sys.executable, "-c", code, *args),
                                   env=dict(os.environ)), output=pump)
    child.start()
    return child


def _wait(predicate, timeout=4.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def _finish(pump, *children):
    for child in children:
        _wait(lambda: child.poll(time.monotonic()) is not None)
    _wait(lambda: pump.open_streams == 0)


def test_lines_are_prefixed_and_split_by_stream():
    out, err = Sink(), Sink()
    pump = OutputPump(out, err)
    pump.start()
    try:
        code = ("import sys; print('hello'); print('world'); "
                "sys.stderr.write('oops\\n'); sys.stdout.write('no newline at end')")
        _finish(pump, _run(pump, "worker[2]", code))
        assert out.data == b"worker[2]| hello\nworker[2]| world\nworker[2]| no newline at end\n"
        assert err.data == b"worker[2]| oops\n"
    finally:
        pump.stop()


def test_partial_lines_are_joined_across_writes():
    out = Sink()
    pump = OutputPump(out, Sink())
    pump.start()
    try:
        code = ("import sys, time\n"
                "sys.stdout.write('abc'); sys.stdout.flush(); time.sleep(0.3)\n"
                "sys.stdout.write('def\\r\\nghi'); sys.stdout.flush(); time.sleep(0.3)\n"
                "sys.stdout.write('jkl\\n')\n")
        _finish(pump, _run(pump, "p", code))
        assert out.data == b"p| abcdef\np| ghijkl\n"
    finally:
        pump.stop()


def test_very_long_lines_are_split_and_garbage_is_replaced():
    out = Sink()
    pump = OutputPump(out, Sink())
    pump.start()
    try:
        code = ("import sys; w = sys.stdout.buffer\n"
                "w.write(b'x' * (3 * 65536 + 10) + b'\\n')\n"
                "w.write(b'\\xff\\xfe bin \\x00\\n')\n"
                "w.write(('é' * 40000).encode() + b'\\n')\n")
        _finish(pump, _run(pump, "big", code))
        lines = out.data.split(b"\n")[:-1]
        assert [len(line) for line in lines[:4]] == [5 + MAX_LINE] * 3 + [5 + 10]
        assert all(line.startswith(b"big| ") for line in lines)
        assert lines[4] == "big| \ufffd\ufffd bin \x00".encode()
        accented = b"".join(line[5:] for line in lines[5:]).decode("utf-8")
        assert accented == "é" * 40000 and "\ufffd" not in accented  # no split inside é
    finally:
        pump.stop()


def test_one_thread_serves_many_children():
    out = Sink()
    pump = OutputPump(out, Sink())
    pump.start()
    try:
        before = set(threading.enumerate())
        children = [_run(pump, f"w[{i}]", "print('up')") for i in range(8)]
        # no thread per child: none of the 8 children got one (threads of earlier tests
        # may end meanwhile, so the count of live threads is no measure)
        new = [t.name for t in threading.enumerate() if t not in before]
        assert new == [], new
        _finish(pump, *children)
        assert sorted(out.data.split(b"\n")[:-1]) == sorted(f"w[{i}]| up".encode() for i in range(8))
        assert out.writes == 8  # one write (and flush) per line
    finally:
        pump.stop()
