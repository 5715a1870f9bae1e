"""The watchdog helper process (see ``etcdvisor.process.watchdog`` for the design).

Run as ``python -I -S .../watchdog_main.py`` (or ``-m etcdvisor.process.watchdog_main``)
with a pipe on stdin. Imports only os, sys, signal, select and time, to stay small: keep
it that way (no etcdvisor import, no third-party module). Protocol: one command per
line, ``-`` stands for "no deadline", times are CLOCK_MONOTONIC seconds::

    P <tag> <signal> <term_at> <kill_at>    a child about to be spawned (no pgid yet):
                                            its processes marked ETCDVISOR_CHILD_TAG=<tag>
                                            get the deadlines; replaced by its R, dropped
                                            by X <tag> (the spawn failed)
    R <pgid> <signal> <term_at> <kill_at> [<tag>]
                                            register (or replace) a process group; its
                                            processes marked ETCDVISOR_CHILD_TAG=<tag>
                                            share its fate even outside the group
    B <path>                                the cgroup holding every child's leaf
    D <path>                                a directory of the supervisor's private files
                                            (the children's config files): removed on EOF
    E <pgid> <term_at> <kill_at>            extend (replace) the deadlines of a group
    U <pgid>                                forget a group
    C                                       forget every group (before a full replay)
    Q                                       exit quietly, killing nothing

At ``term_at`` the group (and its marked processes) gets its stop signal, at ``kill_at``
SIGKILL (then it is forgotten). On EOF of stdin (the supervisor died, even by SIGKILL)
every registered group, the cgroup subtree and every marked process get SIGKILL, the
cgroup leaves and the ``D`` directories are removed, and the helper exits.
"""

import _signal as signal  # type: ignore[import-not-found]  # the C module: ``signal`` itself would import enum and ~10 more
import os
import select
import sys
import time


def _deadline(text: str) -> float | None:
    return None if text == "-" else float(text)


TAG_ENV = b"ETCDVISOR_CHILD_TAG="
KILL_ROUNDS = 10


def _marked(tags: set[str]) -> dict[int, str]:
    """{pid: tag} of live processes whose exec'd environment carries one of ``tags``."""
    found = {}
    needles = {b"\0" + TAG_ENV + tag.encode() + b"\0": tag for tag in tags}
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as fh:
                data = fh.read()
        except OSError:
            continue
        if not data:
            continue  # zombie or kernel thread
        data = b"\0" + data + b"\0"
        for needle, tag in needles.items():
            if needle in data:
                found[int(entry)] = tag
                break
    return found


def _signal_marked(tags: set[str], signum: int, skip_pgid: int | None = None) -> None:
    for pid in _marked(tags):
        try:
            if skip_pgid is None or os.getpgid(pid) != skip_pgid:
                os.kill(pid, signum)
        except OSError:
            pass


def _kill_marked(tags: set[str]) -> None:
    """SIGKILL every marked process, rescanning while new ones appear (forks)."""
    for _ in range(KILL_ROUNDS):
        pids = _marked(tags)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        _pause(0.01)


def _pause(seconds: float) -> None:
    select.select([], [], [], seconds)  # a killed process needs a moment to exit


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


def _leaves(base: str) -> list[str]:
    try:
        return [os.path.join(base, e) for e in os.listdir(base)
                if os.path.isdir(os.path.join(base, e))]
    except OSError:
        return []


def _kill_cgroup(base: str) -> None:
    if _write(os.path.join(base, "cgroup.kill"), "1"):
        return
    for leaf in _leaves(base):  # kernel < 5.14: no cgroup.kill
        try:
            with open(os.path.join(leaf, "cgroup.procs")) as fh:
                pids = [int(p) for p in fh.read().split()]
        except OSError:
            continue
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def _remove_cgroup(base: str, bound: float = 2.0) -> None:
    """rmdir the leaves and the base, retrying while killed members finish exiting."""
    deadline = time.monotonic() + bound
    while True:
        for path in _leaves(base) + [base]:
            try:
                os.rmdir(path)
            except OSError:
                pass
        if not os.path.isdir(base) or time.monotonic() >= deadline:
            return
        _pause(0.02)


def _kill_everything(table: dict[int, list], base: str | None) -> None:  # type: ignore[type-arg]
    for pgid in table:
        _signal_group(pgid, signal.SIGKILL)
    if base:
        _kill_cgroup(base)
    tags = {entry[3] for entry in table.values() if entry[3]}
    if tags:
        _kill_marked(tags)
    if base:
        _remove_cgroup(base)


def _remove_tree(path: str) -> None:
    """Remove directory ``path`` and what it holds, never following a symlink
    (shutil would pull in a dozen modules)."""
    if os.path.islink(path):
        return  # never follow one (only its owner could have put it there, but still)
    try:
        entries = list(os.scandir(path))
    except OSError:
        return  # gone already, or a file
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                _remove_tree(entry.path)
            else:
                os.unlink(entry.path)
        except OSError:
            pass
    try:
        os.rmdir(path)
    except OSError:
        pass


def _signal_group(pgid: int, signum: int) -> bool:
    """False when there is no such group; a pending child's entry (negative key) has none."""
    if pgid <= 0:
        return False
    try:
        os.killpg(pgid, signum)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _apply(table: dict[int, list], line: str, settings: dict[str, str | None],  # type: ignore[type-arg]
           dirs: set[str]) -> bool:
    """Apply one command line; return False when told to quit."""
    if line.startswith("B "):
        settings["cgroup"] = line[2:]
        return True
    if line.startswith("D "):
        dirs.add(line[2:])
        return True
    parts = line.split()
    if not parts:
        return True
    op = parts[0]
    if op == "Q":
        return False
    if op == "R" and len(parts) in (5, 6):
        tag = parts[5] if len(parts) == 6 else None
        pgid = int(parts[1])
        if pgid <= 0:
            raise ValueError("pgid")
        if tag:
            _forget_pending(table, tag)
        table[pgid] = [_deadline(parts[3]), _deadline(parts[4]), int(parts[2]), tag]
    elif op == "P" and len(parts) == 5:
        # keyed by a negative number: no group to signal, only the marked processes
        _forget_pending(table, parts[1])
        table[-_serial()] = [_deadline(parts[3]), _deadline(parts[4]), int(parts[2]), parts[1]]
    elif op == "X" and len(parts) == 2:
        _forget_pending(table, parts[1])
    elif op == "E" and len(parts) == 4:
        entry = table.get(int(parts[1]))
        if entry is not None:
            entry[0], entry[1] = _deadline(parts[2]), _deadline(parts[3])
    elif op == "C":
        table.clear()
    elif op == "U" and len(parts) == 2:
        table.pop(int(parts[1]), None)
    return True


_SERIAL = [0]


def _serial() -> int:
    _SERIAL[0] += 1
    return _SERIAL[0]


def _forget_pending(table: dict[int, list], tag: str) -> None:  # type: ignore[type-arg]
    for key in [k for k, entry in table.items() if k < 0 and entry[3] == tag]:
        del table[key]


def _fire_due(table: dict[int, list], now: float) -> float | None:  # type: ignore[type-arg]
    """Send due signals; return the next deadline or None."""
    next_due = None
    for pgid in list(table):
        term_at, kill_at, signum, tag = table[pgid]
        if kill_at is not None and now >= kill_at:
            _signal_group(pgid, signal.SIGKILL)
            if tag:
                _kill_marked({tag})
            del table[pgid]
            continue
        if term_at is not None and now >= term_at:
            if tag:  # a pending child (negative key) has only its marked processes
                _signal_marked({tag}, signum, skip_pgid=pgid if pgid > 0 else None)
            if pgid > 0 and not _signal_group(pgid, signum) and kill_at is None:
                del table[pgid]  # group gone and nothing left to enforce
                continue
            table[pgid][0] = term_at = None
        for due in (term_at, kill_at):
            if due is not None and (next_due is None or due < next_due):
                next_due = due
    return next_due


def main() -> int:
    # A terminal Ctrl-C or a hangup is not for us: only EOF or "Q" ends the helper.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    table: dict[int, list] = {}  # type: ignore[type-arg]  # pgid -> [term_at, kill_at, signal, tag]
    settings: dict[str, str | None] = {"cgroup": None}
    dirs: set[str] = set()  # D: removed on EOF
    pending = b""
    while True:
        next_due = _fire_due(table, time.monotonic())
        timeout = None if next_due is None else max(0.0, next_due - time.monotonic())
        readable, _, _ = select.select([0], [], [], timeout)
        if not readable:
            continue
        data = os.read(0, 65536)
        if not data:
            _kill_everything(table, settings["cgroup"])
            for path in dirs:
                _remove_tree(path)
            return 0
        pending += data
        *lines, pending = pending.split(b"\n")
        for line in lines:
            try:
                if not _apply(table, line.decode("utf-8", "surrogateescape"), settings, dirs):
                    return 0
            except (ValueError, IndexError):
                sys.stderr.write(f"etcdvisor watchdog: bad command {line!r}\n")


if __name__ == "__main__":
    sys.exit(main())
