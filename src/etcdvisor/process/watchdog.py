"""The safety net for a frozen (SIGSTOP) or killed (SIGKILL) supervisor.

The supervisor enforces stop deadlines itself, but it cannot while it is frozen, and
the parent-death signal of a child only kills the child, not its group. So a tiny
helper process (``etcdvisor.process.watchdog_main``) holds a table
``{pgid: (term_at, kill_at, stop_signal)}`` on the shared CLOCK_MONOTONIC clock
(``time.monotonic()`` in both processes) and:

- sends the stop signal to a group at ``term_at`` and SIGKILL at ``kill_at`` unless the
  supervisor extended the deadlines first (None = no deadline);
- on EOF of its stdin -- the supervisor died, whatever the cause, even SIGKILL, because
  the kernel closes the pipe's write end -- SIGKILLs every registered group, the whole
  cgroup subtree of the supervisor's children (``cgroup.kill``), and every process whose
  environment carries the tag of a registered child (``ETCDVISOR_CHILD_TAG``, found in
  ``/proc/*/environ``, rescanned until none is left), so setsid daemons that escaped
  their group die too; then it removes the cgroup leaves and the supervisor's private
  directories (``remove_on_exit``: the children's config files, which may hold
  secrets), and exits. This replaces the
  parent-death signal (children are spawned without one, see ``spawn``);
- at a group's ``kill_at`` it also SIGKILLs that child's marked processes;
- knows a lease-bound child before it exists: ``pending(tag, ...)`` is written at once,
  before the fork, and the helper enforces those deadlines on the processes marked with
  that tag until the child's ``register`` (same tag) arrives with the next flush. A
  supervisor frozen between the fork and that flush (the manager batches) cannot
  leave the child unguarded;
- exits quietly, killing nothing, when told to (``stop()``);
- keeps running while the supervisor is SIGSTOPped: it is a separate process in its own
  session (``start_new_session=True``), so a stop signal sent to the supervisor or to
  its process group does not reach it, and it waits with ``select`` on its own timer.

The helper is started as a script (``python -I -S .../watchdog_main.py``): no site, no
``etcdvisor`` package import, only os, sys, signal, select and time.

Client guarantees: every method returns promptly. With ``batched=True`` (the process
manager) commands are sent by ``flush()`` -- once per manager tick, right after the
children of that tick were started -- instead of one write per command. The pipe to the
helper is non-blocking; if the helper is frozen and the pipe is full, commands are queued and sent
by the next call (or ``flush()``). ``ensure_running()`` restarts a helper that died and
replays the table. Call it from the decision loop only (not thread-safe).

Limits: pgids are numbers; the helper may signal a group that was reaped and whose
number was reused if the unregister message races the reuse (needs a full PID wrap).
The marker scan reads every ``/proc/<pid>/environ`` (root or same uid; a few ms).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterable
from typing import IO

import psutil

_MAX_QUEUED = 1 << 20  # if the helper stays frozen this long, drop and replay the table
_BATCH_LIMIT = 1 << 14  # a batched client writes at once beyond this much


def _fmt(deadline: float | None) -> str:
    return "-" if deadline is None else repr(float(deadline))


HELPER_MODULE = "etcdvisor.process.watchdog_main"
HELPER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "watchdog_main.py")


def helper_argv(python: str = sys.executable) -> list[str]:
    """Run the helper file directly without site: nothing beyond the stdlib it uses.
    The module name follows as an (ignored) argument, so ``ps``/``pgrep -f`` still find
    ``etcdvisor.process.watchdog_main``."""
    if os.path.isfile(HELPER_SCRIPT):
        return [python, "-I", "-S", HELPER_SCRIPT, HELPER_MODULE]
    return [python, "-m", HELPER_MODULE]


def find_helper(supervisor_pid: int) -> int | None:
    """The pid of the watchdog helper a running supervisor started, or None
    (for operators, tests and benchmarks looking at a supervisor from outside)."""
    try:
        children = psutil.Process(supervisor_pid).children()
    except psutil.Error:
        return None
    for proc in children:
        try:
            cmdline = " ".join(proc.cmdline())
            if HELPER_MODULE in cmdline or HELPER_SCRIPT in cmdline:
                return proc.pid
        except psutil.Error:
            pass
    return None


def _pipe_of(proc: subprocess.Popen[bytes]) -> IO[bytes]:
    assert proc.stdin is not None  # started with stdin=PIPE
    return proc.stdin


class Watchdog:
    """Client side of the watchdog helper."""

    def _pipe(self) -> IO[bytes]:
        assert self._proc is not None
        return _pipe_of(self._proc)

    def __init__(self, python: str = sys.executable, *, batched: bool = False):
        self._python = python
        # batched: commands wait for flush() (the manager flushes at the end of every
        # tick), so a burst of starts and exits costs one pipe write, not two per child.
        self.batched = batched
        self._proc: subprocess.Popen[bytes] | None = None
        self._table: dict[int, tuple[float | None, float | None, int, str | None]] = {}
        self._pending: dict[str, tuple[float | None, float | None, int]] = {}  # tag -> P entry
        self._queued = bytearray()
        self._cgroup_base: str | None = None
        self._dirs: set[str] = set()

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def start(self, cgroup_base: str | None = None) -> None:
        """Start the helper (idempotent). ``cgroup_base``: the cgroup holding every
        child's leaf, killed as a whole if the supervisor dies."""
        if cgroup_base is not None:
            self._cgroup_base = cgroup_base
        if self._proc is not None and self._proc.poll() is None:
            return
        # The helper needs no environment: it gets none, so no secret (password_env)
        # reaches it; only an inherited marker stays, so that a supervisor running as
        # another supervisor's child keeps its helper attributable to that child.
        env = {k: v for k, v in os.environ.items() if k == "ETCDVISOR_CHILD_TAG"}
        self._proc = subprocess.Popen(
            helper_argv(self._python), env=env,
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, bufsize=0,
            start_new_session=True, close_fds=True,
        )
        os.set_blocking(self._pipe().fileno(), False)
        self._queued.clear()
        self._send(self._replay(), now=True)

    def is_alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def ensure_running(self) -> bool:
        """Restart the helper if it died (replaying the table); True if it was restarted."""
        if self._proc is None or self.is_alive():
            return False
        self._proc = None
        self.start()
        return True

    def register(self, pgid: int, term_at: float | None = None, kill_at: float | None = None,
                 stop_signal: int = signal.SIGTERM, tag: str | None = None) -> None:
        """Watch group ``pgid``; with no deadlines it is still killed if we die.
        ``tag``: the child's ``ETCDVISOR_CHILD_TAG``, to kill its escaped processes too."""
        entry = (term_at, kill_at, int(stop_signal), tag)
        self._table[pgid] = entry
        if tag is not None:
            self._pending.pop(tag, None)  # the helper drops its P entry on this R
        self._send(self._register_line(pgid, *entry))

    def pending(self, tag: str, term_at: float | None, kill_at: float | None,
                stop_signal: int = signal.SIGTERM) -> None:
        """A child marked ``tag`` is about to be spawned: enforce these deadlines on
        its marked processes until its ``register`` (same tag) or ``spawn_failed``.
        Sent at once, before the spawn, so a supervisor frozen between the fork and
        its next flush cannot leave a lease-bound child unguarded."""
        self._pending[tag] = (term_at, kill_at, int(stop_signal))
        self._send(self._pending_line(tag, *self._pending[tag]), now=True)

    def remove_on_exit(self, path: str) -> None:
        """Have the helper remove directory ``path`` (and its files) if the
        supervisor dies; a clean ``stop()`` leaves it to the supervisor."""
        if "\n" in path:
            raise ValueError(f"directory path with a newline: {path!r}")
        self._dirs.add(path)
        self._send(f"D {path}\n", now=True)

    def spawn_failed(self, tag: str) -> None:
        if self._pending.pop(tag, None) is not None:
            self._send(f"X {tag}\n")

    def extend(self, pgid: int, term_at: float | None, kill_at: float | None) -> None:
        """Replace the deadlines of a registered group (None = no deadline)."""
        self.extend_many([(pgid, term_at, kill_at)])

    def extend_many(self, entries: Iterable[tuple[int, float | None, float | None]]) -> None:
        """Replace the deadlines of several groups with one write."""
        lines = []
        for pgid, term_at, kill_at in entries:
            entry = self._table.get(pgid)
            if entry is None:
                continue
            self._table[pgid] = (term_at, kill_at, entry[2], entry[3])
            lines.append(f"E {pgid} {_fmt(term_at)} {_fmt(kill_at)}\n")
        self._send("".join(lines), now=True)  # deadlines never wait for a batch

    def unregister(self, pgid: int) -> None:
        """Forget group ``pgid`` (call once its leader is reaped)."""
        if self._table.pop(pgid, None) is not None:
            self._send(f"U {pgid}\n")

    def stop(self, timeout: float = 2.0) -> None:
        """Tell the helper to exit without killing anything, and reap it (bounded wait)."""
        if self._proc is None:
            return
        proc, self._proc = self._proc, None
        self._table.clear()
        self._pending.clear()
        try:
            os.set_blocking(_pipe_of(proc).fileno(), True)
            _pipe_of(proc).write(bytes(self._queued) + b"Q\n")
        except OSError:
            pass
        self._queued.clear()
        try:
            _pipe_of(proc).close()
        except OSError:
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    @staticmethod
    def _register_line(pgid: int, term_at: float | None, kill_at: float | None, stop_signal: int,
                       tag: str | None = None) -> str:
        suffix = f" {tag}" if tag else ""
        return f"R {pgid} {stop_signal} {_fmt(term_at)} {_fmt(kill_at)}{suffix}\n"

    @staticmethod
    def _pending_line(tag: str, term_at: float | None, kill_at: float | None, stop_signal: int) -> str:
        return f"P {tag} {stop_signal} {_fmt(term_at)} {_fmt(kill_at)}\n"

    def _replay(self) -> str:
        """The whole state as commands (after a restart or an overflowing backlog)."""
        base = self._cgroup_base
        head = f"B {base}\n" if base and "\n" not in base else ""
        head += "".join(f"D {path}\n" for path in sorted(self._dirs))
        return head + "".join(self._register_line(p, *e) for p, e in self._table.items()) \
            + "".join(self._pending_line(t, *e) for t, e in self._pending.items())

    def flush(self) -> None:
        """Send queued commands, if any, without blocking."""
        self._send("", now=True)

    def _send(self, text: str, now: bool = False) -> None:
        if self._proc is None:
            return
        self._queued += text.encode("utf-8", "surrogateescape")
        if self.batched and not now and len(self._queued) < _BATCH_LIMIT:
            return
        if len(self._queued) > _MAX_QUEUED:
            # Keep the rest of a line already partly written, then replace the backlog
            # by a full replay of the table (it describes the same final state).
            end_of_partial = self._queued.find(b"\n") + 1
            replay = "C\n" + self._replay()
            self._queued = self._queued[:end_of_partial] + replay.encode("ascii")
        try:
            while self._queued:
                written = self._pipe().write(self._queued)
                if not written:
                    break  # pipe full (helper frozen): keep the rest for later
                del self._queued[:written]
        except BlockingIOError:
            pass
        except BrokenPipeError:
            self._queued.clear()  # helper died; ensure_running() restarts and replays
