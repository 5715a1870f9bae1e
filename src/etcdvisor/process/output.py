"""Forward every child's stdout/stderr, line by line, with a ``name| `` prefix, or to a file.

One thread serves all children through ``selectors`` (epoll): an idle supervisor with
many children costs one blocked thread and no wakeups (no per-child threads, no polling).

Guarantees:

- each complete line is written as ``name| line\\n`` with a single ``write`` followed by
  ``flush``, to the supervisor's stdout (for the child's stdout) or stderr (for stderr);
- a partial line is kept until its newline arrives; at EOF it is written with a newline
  added; ``\\r\\n`` endings lose the ``\\r``;
- lines longer than 64 KiB are split into 64 KiB pieces (not cutting inside a UTF-8
  sequence), each written as its own prefixed line, so memory per stream is bounded;
- bytes are decoded as UTF-8 with ``errors='replace'``: binary garbage becomes U+FFFD;
- at EOF the pipe is unregistered and closed through its file object.

``add()`` may be called from any thread; registration happens on the pump thread (a
wakeup pipe nudges it), so the selector is only touched by one thread.

A stream with a :class:`~.logfile.LogFileSpec` (role key ``stdout``/``stderr`` with a
``file``) goes to that file instead, through one shared :class:`~.logfile.FileSink`
per path (children whose files resolve to the same path share it: their lines never
mix inside a line, as only whole lines are handed over). Each sink has its own writer
thread; while one is more than ``logfile.HIGH_WATER`` bytes behind (a slow disk), the
pipes of its children are left unread until it caught up: those children wait once
their pipe buffer is full, the others and this thread never do. File lines are the child's
raw bytes, no prefix, no decoding, no log format (``\\r`` kept); each read's complete
lines go out in one ``write``; lines longer than 64 KiB are split as above; a partial
line at EOF gets a newline. File errors (full disk...) drop output, never block: see
process/logfile.py.

Limits: a partial line without newline is held until more output or EOF (no timer);
writes to the supervisor's stdout/stderr block this thread (not the decision loop) if
the reader of those is slow. The order between a child's stdout and stderr lines is
the order in which the pump saw them, not necessarily the order they were written.
"""

from __future__ import annotations

import os
import re
import selectors
import sys
import threading
import time
from collections.abc import Callable
from typing import BinaryIO

from etcdvisor.process.logfile import FileSink, LogFileSpec, RotatingFile

# a child's name: ``worker[0]`` (sharded: its INDEX or shard), ``report@<tick>`` (cron),
# ``thumbs#<message id>`` (topic), ``api`` (singleton, job)
_CHILD_NAME = re.compile(r"([a-z][a-z0-9_-]*)(?:\[([^\]]+)\]|@(.+)|#(.+))?\Z")


def child_role_slot(name: str) -> tuple[str | None, str | None]:
    """``worker[0/2]`` -> (worker, 0/2); ``report@T`` -> (report, T); ``api`` -> (api, None):
    the ``role`` and ``slot`` of a child's log lines (JSON keys, metric labels)."""
    match = _CHILD_NAME.match(name)
    if match is None:
        return None, None
    slot = next((group for group in match.groups()[1:] if group is not None), None)
    return match.group(1), slot


MAX_LINE = 64 * 1024
_READ_SIZE = 64 * 1024

# (child name, "stdout" | "stderr", decoded line without newline) -> bytes to write.
# None: the plain ``name| line`` form. Set once at start-up by etcdvisor.logs.configure
# (timestamps, JSON), before any child starts.
LineFormat = Callable[[str, str, str], bytes]
_line_format: LineFormat | None = None


def set_line_format(fmt: LineFormat | None) -> None:
    """Write every later child line with ``fmt`` (None: the plain prefix form)."""
    global _line_format
    _line_format = fmt


class _Stream:
    """One child pipe: its file object, prefix, destination and pending partial line."""

    __slots__ = ("file", "file_spec", "kind", "name", "pending", "pipe", "prefix", "sink")

    def __init__(self, pipe: BinaryIO, name: str, kind: str, sink: BinaryIO,
                 file_spec: LogFileSpec | None = None):
        self.pipe = pipe
        self.name = name
        self.kind = kind  # stdout | stderr
        self.prefix = f"{name}| ".encode("utf-8", "replace")
        self.sink = sink
        self.pending = b""
        self.file_spec = file_spec
        self.file: FileSink | None = None  # set on the pump thread when registered


def _utf8_cut(data: bytes, limit: int) -> int:
    """An index <= limit that does not split a UTF-8 multi-byte sequence (if avoidable)."""
    cut = limit
    # Step back over continuation bytes (10xxxxxx), at most 3 of them.
    while cut > limit - 3 and cut > 0 and (data[cut] & 0xC0) == 0x80:
        cut -= 1
    return cut if cut > 0 else limit


def file_lines(pending: bytes, chunk: bytes) -> tuple[bytes, bytes]:
    """Split ``pending + chunk`` into (whole lines to write, new pending), cutting any
    line longer than ``MAX_LINE`` (newline added at the cut). ``pending`` must be at most
    ``MAX_LINE`` bytes and ``chunk`` at most ``_READ_SIZE``, so only the first line can be
    too long: the cost is a few slices per read, not a loop per line."""
    first = chunk.find(b"\n")
    pieces = []
    head = pending + (chunk if first < 0 else chunk[:first])
    while len(head) > MAX_LINE:
        cut = _utf8_cut(head, MAX_LINE)
        pieces.append(head[:cut] + b"\n")
        head = head[cut:]
    if first < 0:
        return b"".join(pieces), head
    pieces.append(head + b"\n")
    last = chunk.rfind(b"\n")
    pieces.append(chunk[first + 1:last + 1])
    return b"".join(pieces), chunk[last + 1:]


class OutputPump:
    """The single output-forwarding thread. ``start()``, ``add()`` per child, ``stop()``."""

    def __init__(self, stdout: BinaryIO | None = None, stderr: BinaryIO | None = None,
                 file_clock: Callable[[], float] = time.monotonic,
                 file_writer: Callable[[int, bytes | memoryview], int] = os.write):
        self._stdout = stdout
        self._stderr = stderr
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._lock = threading.Lock()
        self._incoming: list[_Stream] = []
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._open_streams = 0
        # path -> (its sink, how many open streams use it); pump thread only
        self._files: dict[str, tuple[FileSink, int]] = {}
        self._paused: dict[FileSink, list[_Stream]] = {}  # streams left unread: sink too far behind
        self._drained: list[FileSink] = []  # sinks back under their low water (under _lock)
        self._retired: list[FileSink] = []  # closed sinks still writing out their queue
        self._file_clock = file_clock
        self._file_writer = file_writer
        # while held (an upgrade hands the pipes' numbers to the next image), a pipe at EOF
        # is set aside open, not closed: its number stays valid until the exec
        self._holding = False
        self._held: list[_Stream] = []  # at EOF while held (pump thread; under _lock)

    def start(self) -> None:
        """Start the pump thread (idempotent)."""
        if self._thread is not None:
            return
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._thread = threading.Thread(target=self._run, name="output-pump", daemon=True)
        self._thread.start()

    def add(self, name: str, stdout_pipe: BinaryIO | None, stderr_pipe: BinaryIO | None,
            files: tuple[LogFileSpec | None, LogFileSpec | None] = (None, None)) -> None:
        """Forward the two pipes (file objects or None) of child ``name``; takes ownership.
        ``files``: where stdout and stderr go instead of the supervisor's own (None: there)."""
        streams = []
        if stdout_pipe is not None:
            streams.append(_Stream(stdout_pipe, name, "stdout", self._stdout or sys.stdout.buffer, files[0]))
        if stderr_pipe is not None:
            streams.append(_Stream(stderr_pipe, name, "stderr", self._stderr or sys.stderr.buffer, files[1]))
        with self._lock:
            wake = not self._incoming  # else a wake-up is already on its way
            self._incoming.extend(streams)
        if wake:
            self._wake()

    @property
    def open_streams(self) -> int:
        """How many pipes are currently forwarded (for tests and status)."""
        return self._open_streams

    def hold_pipes(self, hold: bool) -> None:
        """``True``: from the return on, no pipe is closed (one at EOF is set aside open),
        so descriptor numbers read now stay valid (an in-place upgrade hands them over).
        ``False`` (the upgrade was abandoned): the pipes set aside meanwhile are closed."""
        with self._lock:
            self._holding = hold
        if not hold:
            self._wake()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the thread, flushing partial lines of still-open pipes (does not close them)."""
        if self._thread is None:
            return
        self._stopping = True
        self._wake()
        self._thread.join(timeout)
        self._thread = None

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass  # a wakeup is already pending

    def _run(self) -> None:
        while not self._stopping:
            for key, _ in self._selector.select():
                if key.data is None:
                    self._take_incoming()
                else:
                    self._read(key.data)
        for key in list(self._selector.get_map().values()):
            if key.data is not None:
                self._flush_partial(key.data)
        for streams in self._paused.values():
            for stream in streams:
                self._flush_partial(stream)
        for sink, _users in self._files.values():
            sink.close()
        deadline = time.monotonic() + 1.5  # what is queued reaches the files, within bounds
        for sink in [s for s, _users in self._files.values()] + self._retired:
            sink.join(max(0.0, deadline - time.monotonic()))
        self._files.clear()
        self._retired.clear()

    def _take_incoming(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        with self._lock:
            incoming, self._incoming = self._incoming, []
            drained, self._drained = self._drained, []
            released, self._held = ([], self._held) if self._holding else (self._held, [])
        for stream in released:  # held through an upgrade that did not happen
            self._close(stream, registered=False)
        for sink in drained:  # resume reading the streams held back for a slow file
            for stream in self._paused.pop(sink, []):
                self._selector.register(stream.pipe.fileno(), selectors.EVENT_READ, stream)
        for stream in incoming:
            os.set_blocking(stream.pipe.fileno(), False)
            self._selector.register(stream.pipe.fileno(), selectors.EVENT_READ, stream)
            self._open_streams += 1
            if stream.file_spec is not None:
                stream.file = self._acquire(stream.file_spec)

    def _acquire(self, spec: LogFileSpec) -> FileSink:
        sink, users = self._files.get(spec.path, (None, 0))
        if sink is None:
            sink = FileSink(RotatingFile(spec, clock=self._file_clock, writer=self._file_writer),
                            self._on_drained)
        else:
            sink.file.spec = spec  # the newest child's rotation settings win (a reload)
        self._files[spec.path] = (sink, users + 1)
        return sink

    def _release(self, sink: FileSink) -> None:
        _sink, users = self._files[sink.path]
        if users <= 1:
            del self._files[sink.path]
            sink.close()  # written out, then closed: a rotated or removed file is not held open
            self._retired = [s for s in self._retired if s.alive] + [sink]
        else:
            self._files[sink.path] = (sink, users - 1)

    def _on_drained(self, sink: FileSink) -> None:
        """From a writer thread: ``sink`` caught up; read its streams again."""
        with self._lock:
            self._drained.append(sink)
        self._wake()

    def _read(self, stream: _Stream) -> None:
        try:
            chunk = os.read(stream.pipe.fileno(), _READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._close(stream)
            return
        if stream.file is not None:
            whole, stream.pending = file_lines(stream.pending, chunk)
            if whole and stream.file.submit(whole, stream.name):
                # the file is behind (slow disk): leave this pipe unread until it caught up,
                # so only the children writing there wait, once their pipe buffer is full
                self._selector.unregister(stream.pipe.fileno())
                self._paused.setdefault(stream.file, []).append(stream)
            return
        data = stream.pending + chunk
        lines = data.split(b"\n")
        stream.pending = lines.pop()
        for line in lines:
            self._write_line(stream, line)
        while len(stream.pending) > MAX_LINE:
            cut = _utf8_cut(stream.pending, MAX_LINE)
            self._write_line(stream, stream.pending[:cut])
            stream.pending = stream.pending[cut:]

    def _close(self, stream: _Stream, *, registered: bool = True) -> None:
        self._flush_partial(stream)  # (a write: not under the lock)
        if registered:
            self._selector.unregister(stream.pipe.fileno())
        with self._lock:  # hold_pipes(True) returns only once no close is under way
            if self._holding:
                self._held.append(stream)  # set aside open, unregistered
                return
            stream.pipe.close()
        self._open_streams -= 1
        if stream.file is not None:
            self._release(stream.file)
            stream.file = None

    def _flush_partial(self, stream: _Stream) -> None:
        if stream.pending and stream.file is not None:
            stream.file.submit(stream.pending + b"\n", stream.name)
            stream.pending = b""
        elif stream.pending:
            self._write_line(stream, stream.pending)
            stream.pending = b""

    def _write_line(self, stream: _Stream, line: bytes) -> None:
        while len(line) > MAX_LINE:  # a long line inside one read chunk
            cut = _utf8_cut(line, MAX_LINE)
            self._write_line(stream, line[:cut])
            line = line[cut:]
        if line.endswith(b"\r"):
            line = line[:-1]
        text = line.decode("utf-8", "replace")
        fmt = _line_format
        data = stream.prefix + text.encode("utf-8") + b"\n" if fmt is None else fmt(stream.name, stream.kind, text)
        try:
            stream.sink.write(data)
            stream.sink.flush()
        except (OSError, ValueError):
            pass  # our own stdout is gone; keep draining so children never block
