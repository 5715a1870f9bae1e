"""Child subreaper and orphan reaping that never steals our own children's statuses.

When the supervisor is PID 1 of a container, or calls ``become_subreaper()``, orphaned
descendants (a grandchild whose parent exited) are reparented to it and must be reaped
or they stay zombies. Reaping with a blind ``waitpid(-1)`` would also reap our own
children and steal the exit status that ``subprocess.Popen.poll`` needs (Popen then
reports 0). So ``Reaper.reap()``:

1. peeks with ``waitid(P_ALL, 0, WEXITED | WNOHANG | WNOWAIT)`` (the zombie stays);
2. reaps it with ``waitpid`` only if ``is_known(pid)`` is False;
3. if the peeked zombie is known (its owner will reap it), it scans our children listed
   in ``/proc/self/task/*/children`` and peeks each unknown one individually, so a
   known zombie that nobody reaps yet cannot hide orphans behind it.

Guarantees: never blocks; never reaps a pid for which ``is_known`` returns True.

Limits: ``is_known`` must cover every child any code in this process started and wants
to wait for (process-layer children, the watchdog helper, an embedded etcd server...);
``ProcessManager.protect_pid`` exists for the ones started elsewhere. Call ``reap()``
from the thread that creates children, right after they are recorded (the decision
loop), so a freshly forked child is known before it can be seen as a zombie.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from etcdvisor.process._linux import (
    PR_GET_CHILD_SUBREAPER,
    PR_SET_CHILD_SUBREAPER,
    prctl,
    prctl_get_int,
)
from etcdvisor.process.tracking import children_of


def become_subreaper() -> None:
    """Make orphaned descendants of this process reparent to it (PR_SET_CHILD_SUBREAPER).

    Unnecessary (but harmless) when running as PID 1.
    """
    prctl(PR_SET_CHILD_SUBREAPER, 1)


def is_subreaper() -> bool:
    return os.getpid() == 1 or prctl_get_int(PR_GET_CHILD_SUBREAPER) != 0


def _child_pids() -> list[int]:
    """Our direct children, from /proc (every thread keeps its own children list)."""
    return children_of(os.getpid())


class Reaper:
    """Reap zombies that are not ours to keep. ``is_known(pid)`` names the ones to keep."""

    def __init__(self, is_known: Callable[[int], bool]):
        self._is_known = is_known

    def reap(self, limit: int = 256) -> list[tuple[int, int]]:
        """Reap up to ``limit`` orphans; return [(pid, raw wait status)]."""
        reaped: list[tuple[int, int]] = []
        while len(reaped) < limit:
            pid = self._peek_any()
            if pid is None:
                return reaped
            if self._is_known(pid) or not self._reap_pid(pid, reaped):
                break
        for pid in _child_pids():
            if len(reaped) >= limit:
                break
            if not self._is_known(pid) and self._peek(pid):
                self._reap_pid(pid, reaped)
        return reaped

    @staticmethod
    def _peek_any() -> int | None:
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return None
        return None if info is None else info.si_pid

    @staticmethod
    def _peek(pid: int) -> bool:
        try:
            return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:
            return False

    @staticmethod
    def _reap_pid(pid: int, reaped: list[tuple[int, int]]) -> bool:
        try:
            got, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return False
        if got:
            reaped.append((got, status))
        return bool(got)
