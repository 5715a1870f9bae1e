"""Track everything a child ever spawned, even daemons that left its process group.

A child's process group does not hold a daemon that called ``setsid``, and once the
daemon's parent exits it is re-parented to the supervisor (a child subreaper), so it is
no longer a descendant of the child either. Two mechanisms keep such escapees
attributable to the child that started them:

- **the marker**: every child is started with ``ETCDVISOR_CHILD_TAG=<random>`` in its
  environment; descendants inherit it, and ``/proc/<pid>/environ`` keeps showing the
  environment a process was exec'd with even after it calls ``clearenv()``;
- **lineage**: while processes live, ``census()`` looks at the supervisor's unknown
  direct children (re-parented orphans), attributes them by marker and records
  ``(pid, start time) -> tag`` for them and their descendants, so a process that later
  execs with an empty environment is still recognised (the start time guards against
  pid reuse);
- **a cgroup v2 per child** (``process/cgroup.py``) where one can be created; its
  members are included too.

``TreeTracker.members(tag, leader)`` returns the live (non-zombie) pids of one child's
tree: the leader's descendants, tagged or recorded orphans and their descendants, the
members of its cgroup. With ``subreaper=True`` (``supervisor run``) every process that
came from a child stays a descendant of the supervisor, so only that subtree is read;
otherwise all of ``/proc`` is scanned for the marker.

Limits: a daemon that execs with a clean environment before the first census (and
outside a cgroup) is not recognised; reading another user's ``environ`` needs root or
the same uid. Not thread-safe: call from the decision-loop thread.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from etcdvisor.process.cgroup import Attachment, CgroupPool

TAG_ENV = "ETCDVISOR_CHILD_TAG"
CENSUS_INTERVAL = 1.0  # seconds between census runs while a child is tracked
KILL_ROUNDS = 8        # scan + SIGKILL rounds: a process may fork while we kill


def new_tag() -> str:
    return os.urandom(8).hex()


def read_tag(pid: int) -> str | None:
    """The marker in ``/proc/<pid>/environ`` (as exec'd), or None."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            data = b"\0" + fh.read()
    except OSError:
        return None
    needle = b"\0" + TAG_ENV.encode() + b"="
    start = data.find(needle)
    if start == -1:
        return None
    start += len(needle)
    end = data.find(b"\0", start)
    return data[start:end if end != -1 else len(data)].decode("ascii", "replace")


def stat_fields(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks) of ``pid``, or None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0].decode(), int(fields[19])


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid`` (every thread keeps its own list)."""
    pids: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return pids
    for tid in tids:
        pids.extend(_thread_children(pid, int(tid)))
    return pids


def _thread_children(pid: int, tid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{tid}/children", "rb") as fh:
            return [int(p) for p in fh.read().split()]
    except OSError:
        return []


def subtree(roots: Iterable[int]) -> set[int]:
    """``roots`` and all their descendants."""
    seen: set[int] = set()
    todo = list(roots)
    while todo:
        pid = todo.pop()
        if pid not in seen:
            seen.add(pid)
            todo.extend(children_of(pid))
    return seen


def all_pids() -> list[int]:
    return [int(e) for e in os.listdir("/proc") if e.isdigit()]


def alive(pids: Iterable[int]) -> set[int]:
    """The pids that exist and are not zombies."""
    out = set()
    for pid in pids:
        fields = stat_fields(pid)
        if fields is not None and fields[0] not in ("Z", "X"):
            out.add(pid)
    return out


def signal_pids(pids: Iterable[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except (ProcessLookupError, PermissionError):
            pass


class TreeTracker:
    """Marker, lineage and (optional) cgroups for the children of one manager."""

    def __init__(self, is_known: Callable[[int], bool], *, subreaper: bool,
                 cgroups: CgroupPool | None = None):
        self._is_known = is_known
        self.subreaper = subreaper
        self.cgroups = cgroups
        self._lineage: dict[tuple[int, int], str] = {}  # (pid, start time) -> tag
        self._live: set[str] = set()  # tags whose leader runs
        self._gone: set[str] = set()  # tags whose leader was reaped, escapees to kill
        self._next_census = 0.0

    # -- child lifecycle -----------------------------------------------------------

    def reserve_leaf(self, memory_max: int | None = None) -> str | None:
        """The cgroup leaf the next child goes to (None without cgroups)."""
        return self.cgroups.reserve(memory_max) if self.cgroups is not None else None

    def unreserve_leaf(self, leaf: str | None) -> None:
        if leaf is not None and self.cgroups is not None:
            self.cgroups.unreserve(leaf)

    def child_started(self, tag: str, pid: int, leaf: str | None = None,
                      memory_max: int | None = None) -> Attachment | None:
        self._live.add(tag)
        return self.cgroups.attach(pid, leaf, memory_max) if self.cgroups is not None else None

    def child_reaped(self, tag: str) -> None:
        """The leader is gone; escapees found later by ``census`` are killed."""
        self._live.discard(tag)
        self._gone.add(tag)

    # -- membership ----------------------------------------------------------------

    def members(self, tag: str, leader: int | None,
                attachment: Attachment | None = None) -> set[int]:
        """Live pids of the tree of child ``tag`` (the leader included if alive)."""
        roots = set() if leader is None else {leader}
        if self.subreaper:
            candidates = [p for p in children_of(os.getpid()) if not self._is_known(p)]
        else:
            candidates = all_pids()
        for pid in candidates:
            if pid != os.getpid() and self._owner_of(pid) == tag:
                roots.add(pid)
        pids = subtree(roots)
        if attachment is not None and self.cgroups is not None:
            pids.update(self.cgroups.pids(attachment))
        pids.discard(os.getpid())
        return alive(pids)

    def _owner_of(self, pid: int) -> str | None:
        fields = stat_fields(pid)
        if fields is None:
            return None
        recorded = self._lineage.get((pid, fields[1]))
        return recorded if recorded is not None else read_tag(pid)

    def kill_tree(self, tag: str, leader: int | None, attachment: Attachment | None) -> set[int]:
        """SIGKILL the whole tree, rescanning while new processes show up; return the
        pids that still looked alive after the last round (normally none)."""
        if attachment is not None and self.cgroups is not None:
            self.cgroups.kill(attachment)
        left: set[int] = set()
        for _ in range(KILL_ROUNDS):
            left = self.members(tag, leader, attachment) - ({leader} if leader else set())
            if not left:
                break
            signal_pids(left, signal.SIGKILL)
        return left

    # -- census ----------------------------------------------------------------------

    def next_census(self) -> float | None:
        """When ``census`` must run (None: no reaped child left to check, so no
        wake-up; while children only run, lineage is recorded on ticks that happen)."""
        return self._next_census if self._gone else None

    def census(self, now: float) -> None:
        """Record lineage of re-parented orphans; SIGKILL those whose child is gone.

        Runs at most every ``CENSUS_INTERVAL`` and only while some tag is tracked.
        """
        if not (self._live or self._gone) or now < self._next_census:
            return
        self._next_census = now + CENSUS_INTERVAL
        self._census()

    def _census(self) -> None:
        if self.subreaper:
            # Orphans re-parented to a subreaper go to its first live thread, the main
            # thread (the decision loop, which lives as long as we do): its one list,
            # not the ~25 of every thread (1.1 -> 0.1 ms per census, once a second).
            me = os.getpid()
            orphans = [p for p in _thread_children(me, me) if not self._is_known(p)]
        elif self._gone:
            orphans = [p for p in all_pids() if p != os.getpid()]  # went to init: look everywhere
        else:
            orphans = []
        for pid in orphans:
            tag = self._owner_of(pid)
            if tag is None or (tag not in self._live and tag not in self._gone):
                continue
            family = subtree([pid])
            for member in family:
                fields = stat_fields(member)
                if fields is not None:
                    self._lineage[(member, fields[1])] = tag
            if tag in self._gone:
                signal_pids(alive(family), signal.SIGKILL)  # its child is gone: nothing escapes
        self._prune()

    def _prune(self) -> None:
        for key in list(self._lineage):
            fields = stat_fields(key[0])
            if fields is None or fields[1] != key[1]:
                del self._lineage[key]
        self._gone &= set(self._lineage.values())  # done with tags that left nothing
