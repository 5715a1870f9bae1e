"""Child output to a file, rotated by size (a role's ``stdout: {file: ...}``).

:class:`FileSink` owns one :class:`RotatingFile` and the one thread that writes it;
the output pump (process/output.py) hands it whole lines and stops reading the pipes
of that file's children while more than ``HIGH_WATER`` bytes wait, until the writer
is back under ``LOW_WATER``: a slow disk holds up only the children writing to that
file, once their pipe buffer is full, never the pump, the other children or the
decision loop. Guarantees of :class:`RotatingFile`:

- ``write(data)`` takes whole lines (each ending with ``\\n``) and writes them with
  as few ``write`` calls as possible; it never splits a line across two files;
- before a line would take the file past ``max_size`` the file is rotated:
  ``PATH.<backups-1>`` -> ``PATH.<backups>`` (the oldest is overwritten, i.e. dropped),
  ..., ``PATH`` -> ``PATH.1``, then a new ``PATH`` is opened; ``backups`` 0 truncates
  ``PATH`` instead. A line longer than ``max_size`` (possible only when ``max_size``
  is below the pump's line bound, 64 KiB) gets a file of its own;
- rotation happens between two writes of the same thread: nothing written is lost
  while rotating, and a reader that follows ``PATH`` (``supervisor logs --follow``)
  sees every line once: no line is written to the old file after the rename;
- an existing file is appended to (its size counts towards ``max_size``);
- a file that cannot be opened or written (full disk: ENOSPC, permissions, a missing
  directory that cannot be made) loses that output, never blocks: the lines are
  dropped, a partial write is cut back to the last whole line (``ftruncate``), and one
  warning per file per minute (``REPORT_INTERVAL``) says so; the next write tries
  again (a reopen after an error), and one info line says when writing works again
  and how many bytes were dropped;
- the file must resolve inside ``LogFileSpec.root`` (the role's working directory),
  symlinks included: checked before any directory is made and at every open
  (docs/safety.md, rule 7, as for peers files).

Limits: one process writes a path (two supervisors sharing a cwd and a file would
both rotate it); a file removed or truncated by someone else keeps being written
through the open descriptor until the next rotation.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("etcdvisor")

REPORT_INTERVAL = 60.0  # seconds between two warnings about one unwritable file
HIGH_WATER = 1 << 20    # bytes queued for one file before its children's pipes are left unread
LOW_WATER = 256 << 10   # ... until the writer is back under this
_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC


@dataclass(frozen=True)
class LogFileSpec:
    """Where one stream of a child goes: ``path`` (absolute, placeholders filled),
    which must stay inside ``root``; rotated at ``max_size`` bytes keeping ``backups``
    old files. ``role`` names the role in messages."""

    path: str
    root: str
    max_size: int
    backups: int
    role: str = ""


def backup_path(path: str, number: int) -> str:
    """``PATH.1`` is the newest backup, ``PATH.<backups>`` the oldest."""
    return f"{path}.{number}"


def inside(root: str, path: str) -> bool:
    """True if ``path`` (symlinks resolved) is ``root`` or below it."""
    real_root = os.path.realpath(root)
    return os.path.commonpath([real_root, os.path.realpath(path)]) == real_root


def open_confined(spec: LogFileSpec) -> int:
    """Open ``spec.path`` for appending (directories made as needed), refusing a path
    that resolves outside ``spec.root``: ``PermissionError`` naming both."""
    parent = os.path.dirname(spec.path)

    def check(path: str) -> None:
        if not inside(spec.root, path):
            raise PermissionError(f"{spec.path} resolves to {os.path.realpath(path)}, outside the "
                                  f"role's working directory {os.path.realpath(spec.root)}")

    check(parent)  # before makedirs: never create a directory outside root
    os.makedirs(parent, exist_ok=True)
    check(spec.path)  # a symlinked directory or file swapped in meanwhile
    return os.open(spec.path, _FLAGS, 0o644)


class RotatingFile:
    """One log file and its backups. Not thread-safe: one writer thread (the pump).

    ``opener(spec) -> fd`` and ``writer(fd, bytes) -> int`` are seams for tests (a full
    disk is an ``OSError(ENOSPC)`` from either); ``clock`` paces the warnings."""

    def __init__(self, spec: LogFileSpec, *, clock: Callable[[], float] = time.monotonic,
                 opener: Callable[[LogFileSpec], int] = open_confined,
                 writer: Callable[[int, bytes | memoryview], int] = os.write):
        if spec.max_size < 1 or spec.backups < 0:
            raise ValueError(f"{spec.path}: max_size must be >= 1 and backups >= 0")
        self.spec = spec
        self.size = 0            # bytes in the current file
        self.dropped = 0         # bytes lost since the last successful write
        self.dropped_total = 0   # bytes lost over the file's life (tests, status)
        self.rotations = 0
        self._clock = clock
        self._opener = opener
        self._writer = writer
        self._fd: int | None = None
        self._last_report: float | None = None

    @property
    def path(self) -> str:
        return self.spec.path

    def write(self, data: bytes, who: str = "") -> None:
        """Append whole lines ``data``, rotating between lines as needed (see module)."""
        limit = self.spec.max_size
        while data:
            if self._fd is None and not self._open(who, len(data)):
                return
            room = limit - self.size
            if len(data) <= room:
                self._put(data, who)
                return
            cut = data.rfind(b"\n", 0, room) + 1 if room > 0 else 0
            if cut == 0 and self.size == 0:
                cut = data.find(b"\n") + 1 or len(data)  # one line longer than max_size
            if cut:
                if not self._put(data[:cut], who):
                    self._drop(len(data) - cut)
                    return
                data = data[cut:]
            if data and not self._rotate(who):
                if self._fd is None:  # rotated, but the new file cannot be opened
                    self._drop(len(data))
                else:
                    self._put(data, who)  # cannot rotate: keep the lines, the file grows
                return

    def close(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None

    # -- internals ---------------------------------------------------------------

    def _open(self, who: str, pending: int) -> bool:
        try:
            self._fd = self._opener(self.spec)
            self.size = os.fstat(self._fd).st_size
        except OSError as exc:
            self.close()
            self._drop(pending)
            self._report(who, "cannot open", exc)
            return False
        return True

    def _put(self, data: bytes, who: str) -> bool:
        fd = self._fd
        assert fd is not None
        view = memoryview(data)
        try:
            while view:
                view = view[self._writer(fd, view):]
        except OSError as exc:
            try:
                os.ftruncate(fd, self.size)  # whole lines only: cut a partial write back
            except OSError:
                pass
            self.close()  # the next write reopens (the file may have gone, the disk been freed)
            self._drop(len(data))
            self._report(who, "cannot write", exc)
            return False
        self.size += len(data)
        if self.dropped:
            log.info("role %s: writing %s again (%d bytes of output were dropped)",
                     self.spec.role, self.spec.path, self.dropped)
            self.dropped = 0
        return True

    def _rotate(self, who: str) -> bool:
        """Shift the backups and start an empty ``PATH``; False (reported) if that failed."""
        fd = self._fd
        assert fd is not None
        path, backups = self.spec.path, self.spec.backups
        try:
            if backups == 0:
                os.ftruncate(fd, 0)  # O_APPEND: the next write lands at offset 0
                self.size = 0
                self.rotations += 1
                return True
            for number in range(backups - 1, 0, -1):
                older = backup_path(path, number)
                if os.path.lexists(older):
                    os.replace(older, backup_path(path, number + 1))
            os.replace(path, backup_path(path, 1))
        except OSError as exc:
            self._report(who, "cannot rotate", exc)
            return False
        self.close()
        self.rotations += 1
        self.size = 0
        return self._open(who, 0)

    def _drop(self, nbytes: int) -> None:
        self.dropped += nbytes
        self.dropped_total += nbytes

    def _report(self, who: str, what: str, exc: OSError) -> None:
        now = self._clock()
        if self._last_report is not None and now - self._last_report < REPORT_INTERVAL:
            return
        self._last_report = now
        reason = exc.strerror or str(exc)
        log.warning("role %s: %s %s (output of %s): %s; its output is dropped until the file "
                    "is writable again, the child keeps running (reported at most once a minute)",
                    self.spec.role, what, self.spec.path, who or "its children", reason)


class FileSink:
    """A :class:`RotatingFile` and its writer thread (see module docstring).

    ``submit`` (pump thread) queues whole lines and returns True when the caller should
    stop reading the streams that write here; ``on_drained()`` is then called once, from
    the writer thread, when the queue is back under ``low_water``. ``close()`` lets the
    thread write what is queued, close the file and end."""

    def __init__(self, file: RotatingFile, on_drained: Callable[[FileSink], None], *,
                 high_water: int = HIGH_WATER, low_water: int = LOW_WATER):
        self.file = file
        self._on_drained = on_drained
        self._high, self._low = high_water, low_water
        self._cond = threading.Condition()
        self._items: deque[tuple[bytes, str]] = deque()
        self._queued = 0
        self._paused = False
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="log-writer", daemon=True)
        self._thread.start()

    @property
    def path(self) -> str:
        return self.file.path

    def submit(self, data: bytes, who: str) -> bool:
        """Queue whole lines ``data`` of child ``who``; True: stop reading until drained."""
        with self._cond:
            self._items.append((data, who))
            self._queued += len(data)
            self._cond.notify()
            if self._queued >= self._high:
                self._paused = True
            return self._paused

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        """False once the writer thread ended (after ``close()``, everything written)."""
        return self._thread.is_alive()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._items and not self._closing:
                    self._cond.wait()
                if not self._items:
                    break  # closing, and everything is written
                batch = list(self._items)
                self._items.clear()
            data = b"".join(item for item, _ in batch)
            names = {who for _, who in batch}
            self.file.write(data, names.pop() if len(names) == 1 else "")
            with self._cond:
                self._queued -= len(data)
                resume = self._paused and self._queued <= self._low
                if resume:
                    self._paused = False
            if resume:
                self._on_drained(self)
        self.file.close()
