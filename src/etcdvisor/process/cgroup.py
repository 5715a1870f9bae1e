"""A cgroup v2 per child, where the machine lets us create one.

``CgroupPool.create()`` makes ``<own cgroup>/etcdvisor.<supervisor pid>.<random>`` and returns
None when that is impossible (no cgroup v2 mount, read-only ``/sys/fs/cgroup`` as in an
unprivileged container, no delegation, or ``ETCDVISOR_CHILD_CGROUPS=off``); the
supervisor then relies on the environment marker alone (``process/tracking.py``).

A child's leaf ``c<N>`` is chosen before it is spawned (``reserve()``). A child started
through the fork path (lease-bound children: ``spawn(cgroup_procs=...)``) moves itself into
it before exec, so nothing it forks can be outside it; every child is also moved by the
pool's thread right after it was spawned (a no-op when it is already there). Leaves are reused
once empty (mkdir + rmdir cost about 0.5 ms, and writing ``cgroup.procs`` takes up to
~15 ms on a busy kernel while it waits for an RCU grace period). So the writes run on
one small thread, never on the decision loop; only ``reserve()`` (lease-bound children,
rare starts) may mkdir a new leaf on the caller's thread. States of an ``Attachment``::

    PENDING --thread picks it--> WRITING --> ATTACHED | FAILED
    PENDING --the child exited first (settle())--> CANCELLED

``settle(att)`` must return True before the child's leader is reaped: until then the
pid is pinned by the zombie, so the thread can never move an unrelated process that
reused the number. Processes a vfork-path child (topic runs) forked before the thread moved
it stay outside the cgroup; they carry the marker (``ETCDVISOR_CHILD_TAG``) and are found by it.

``kill(att)`` writes ``cgroup.kill`` (Linux >= 5.14; else SIGKILLs each member);
``release(att)`` hands the leaf back once empty (the thread kills leftovers first).
The watchdog helper is given the base path: when the supervisor dies it kills the whole
subtree with one write and removes the leaves.
"""

from __future__ import annotations

import enum
import os
import queue
import signal
import threading
import time

DISABLE_ENV = "ETCDVISOR_CHILD_CGROUPS"  # "off" / "0" / "no": marker only
RELEASE_BOUND = 2.0  # seconds the thread waits for a killed leaf to empty


class AttachState(enum.Enum):
    PENDING = "pending"
    WRITING = "writing"
    ATTACHED = "attached"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Attachment:
    """One child's place in the pool (see the module docstring for the states)."""

    __slots__ = ("lock", "memory_max", "path", "pid", "state")

    def __init__(self, pid: int, memory_max: int | None = None):
        self.pid = pid
        self.memory_max = memory_max  # bytes for the leaf's memory.max (None: no limit)
        self.path: str | None = None
        self.state = AttachState.PENDING
        self.lock = threading.Lock()


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal."""
    return field.encode().decode("unicode_escape") if "\\" in field else field


def own_cgroup_dir() -> str | None:
    """The directory of this process's cgroup v2, or None."""
    try:
        with open("/proc/self/cgroup") as fh:
            rel = next((ln[3:].rstrip("\n") for ln in fh if ln.startswith("0::")), None)
        with open("/proc/self/mountinfo") as fh:
            mounts = [ln.split(" - ", 1) for ln in fh if " - cgroup2 " in ln]
    except OSError:
        return None
    if rel is None or not mounts or rel.endswith(" (deleted)"):
        return None
    fields = mounts[0][0].split()
    root, mountpoint = _unescape(fields[3]), _unescape(fields[4])
    if root != "/" and rel.startswith(root):
        rel = rel[len(root):]
    path = os.path.normpath(mountpoint + "/" + rel.lstrip("/"))
    return path if os.path.isdir(path) else None


def _read_pids(path: str) -> list[int]:
    try:
        with open(os.path.join(path, "cgroup.procs"), "rb") as fh:
            return [int(p) for p in fh.read().split()]
    except OSError:
        return []


def _write(path: str, text: str) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY)
    except OSError:
        return False
    try:
        os.write(fd, text.encode())
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _enable_memory(base: str) -> None:
    """Best effort: turn the memory controller on for the leaves (``health.memory`` then
    also sets each child's ``memory.max``); without it the supervisor samples RSS only."""
    try:
        with open(os.path.join(base, "cgroup.controllers"), encoding="ascii") as fh:
            available = fh.read().split()
    except OSError:
        return
    if "memory" in available:
        _write(os.path.join(base, "cgroup.subtree_control"), "+memory")


def set_memory_max(leaf: str, limit: int | None) -> bool:
    """Write the leaf's ``memory.max`` (``max`` for no limit); False where there is no
    memory controller (the file is missing) or the write was refused."""
    path = os.path.join(leaf, "memory.max")
    if not os.path.exists(path):
        return False
    try:  # O_TRUNC as a shell's `echo max > memory.max` (cgroupfs ignores it; a plain file needs it)
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    except OSError:
        return False
    try:
        os.write(fd, (str(limit) if limit else "max").encode())
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def remove_tree(base: str) -> None:
    """Best effort: rmdir the leaves, then ``base`` (fails quietly while populated)."""
    try:
        leaves = [e.path for e in os.scandir(base) if e.is_dir()]
    except OSError:
        return
    for leaf in leaves + [base]:
        try:
            os.rmdir(leaf)
        except OSError:
            pass


class CgroupPool:
    """The leaves under one supervisor's cgroup; one thread does the slow writes."""

    def __init__(self, base: str):
        self.base = base
        self._free: list[str] = []
        self._count = 0
        self._lock = threading.Lock()  # _free and _count: the loop reserves, the thread releases
        self._closing = threading.Event()
        self._queue: queue.SimpleQueue[tuple[str, Attachment] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="cgroups", daemon=True)
        self._thread.start()

    @classmethod
    def create(cls) -> CgroupPool | None:
        if os.environ.get(DISABLE_ENV, "").lower() in ("off", "0", "no", "false"):
            return None
        parent = own_cgroup_dir()
        if parent is None:
            return None
        _remove_stale(parent)
        base = os.path.join(parent, f"etcdvisor.{os.getpid()}.{os.urandom(4).hex()}")
        try:
            os.makedirs(base, exist_ok=True)
        except OSError:
            return None
        if not os.access(os.path.join(base, "cgroup.procs"), os.W_OK):
            remove_tree(base)
            return None
        _enable_memory(base)
        return cls(base)

    # -- loop-thread API (never blocks on the kernel's cgroup locks) -----------------

    def reserve(self, memory_max: int | None = None) -> str | None:
        """A leaf for the next child (its path), chosen before the spawn so that the
        child can move itself into it before exec; pass it to ``attach``. Its
        ``memory.max`` is set (or reset to ``max``) first, where the controller is on."""
        leaf = self._leaf()
        if leaf is not None:
            set_memory_max(leaf, memory_max)
        return leaf

    def unreserve(self, leaf: str) -> None:
        """The spawn a leaf was reserved for failed: hand it back."""
        with self._lock:
            self._free.append(leaf)

    def attach(self, pid: int, leaf: str | None = None, memory_max: int | None = None) -> Attachment:
        att = Attachment(pid, memory_max)
        att.path = leaf
        self._queue.put(("attach", att))
        return att

    def settle(self, att: Attachment) -> bool:
        """True when the pid may be reaped (attach done, failed or cancelled now)."""
        with att.lock:
            if att.state is AttachState.PENDING:
                att.state = AttachState.CANCELLED  # PENDING -> CANCELLED
            return att.state is not AttachState.WRITING

    def pids(self, att: Attachment) -> list[int]:
        if att.state is not AttachState.ATTACHED or att.path is None:
            return []
        return _read_pids(att.path)

    def kill(self, att: Attachment) -> None:
        if att.state is not AttachState.ATTACHED or att.path is None:
            return
        if not _write(os.path.join(att.path, "cgroup.kill"), "1"):
            for pid in _read_pids(att.path):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass

    def release(self, att: Attachment) -> None:
        """The child is reaped: empty its leaf (killing leftovers) and reuse it."""
        if att.state is AttachState.ATTACHED:
            self._queue.put(("release", att))

    def close(self) -> None:
        self._closing.set()
        self._queue.put(None)
        self._thread.join(RELEASE_BOUND + 1.0)
        remove_tree(self.base)

    # -- the thread --------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            op, att = item
            if op == "attach":
                self._attach(att)
            else:
                self._release(att)

    def _attach(self, att: Attachment) -> None:
        with att.lock:
            if att.state is not AttachState.PENDING:
                return  # cancelled: the child is already gone
            att.state = AttachState.WRITING  # PENDING -> WRITING
        path = att.path or self._leaf()
        if path is not None and att.path is None:
            set_memory_max(path, att.memory_max)  # a reserved leaf has it already
        ok = path is not None and _write(os.path.join(path, "cgroup.procs"), str(att.pid))
        with att.lock:
            if ok:
                att.path, att.state = path, AttachState.ATTACHED  # WRITING -> ATTACHED
            else:
                att.path, att.state = None, AttachState.FAILED  # WRITING -> FAILED
        if not ok and path is not None:
            with self._lock:
                self._free.append(path)

    def _leaf(self) -> str | None:
        with self._lock:
            if self._free:
                return self._free.pop()
            self._count += 1
            count = self._count
        path = os.path.join(self.base, f"c{count}")
        try:
            os.mkdir(path)
        except FileExistsError:
            pass
        except OSError:
            return None
        return path

    def _release(self, att: Attachment) -> None:
        if att.path is None:
            return
        deadline = time.monotonic() + RELEASE_BOUND
        while _read_pids(att.path):
            if time.monotonic() >= deadline or self._closing.is_set():
                return  # still busy (D state?) or closing: do not reuse this leaf
            self.kill(att)
            self._closing.wait(0.01)  # a killed member needs a moment to exit
        with self._lock:
            self._free.append(att.path)


def _remove_stale(parent: str) -> None:
    """Remove empty ``etcdvisor.<pid>`` trees left by supervisors that no longer run."""
    try:
        entries = [e for e in os.scandir(parent) if e.name.startswith("etcdvisor.")]
    except OSError:
        return
    for entry in entries:
        pid = entry.name.split(".")[1]
        if pid.isdigit() and int(pid) != os.getpid() and not os.path.exists(f"/proc/{pid}"):
            remove_tree(entry.path)
