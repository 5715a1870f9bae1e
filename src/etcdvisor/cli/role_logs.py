"""``supervisor logs ROLE [--index I] [--follow] [-c CONFIG]``: a role's log files on this member.

Reads the config (``-c CONFIG``, else ``./etcdvisor.yaml``, else ``/etc/etcdvisor.yaml``)
to find where the role's ``stdout``/``stderr`` files are (role cwd, placeholders filled
with this member's id and, with ``--index``, the index; without ``--index`` every
index's file; with a member id made up at each start, every member's file). Prints each current file (not
the backups); with several files (stdout and stderr apart, or one per index) each starts
with a ``==> PATH <==`` line, as ``tail`` does. ``--follow`` keeps printing what is
appended, across rotations (a reader that sees the file replaced drains the old one to
its end, then opens the new one from its start: no line is lost or printed twice), until
interrupted (exit 0). A reader that fell behind by several rotations reads the backups
rotated past meanwhile (as long as they are kept: ``backups``).

Exit codes: 0 printed; 1 no file exists yet (without ``--follow``; with it, the files
are waited for); 2 bad usage: unknown role, a role without a log file (both ``inherit``),
no config, a bad config (one line each).
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import sys
import threading
import time
from typing import TYPE_CHECKING, BinaryIO

from .kit import EXIT_FAIL, EXIT_OK, EXIT_USAGE, UsageError, error

if TYPE_CHECKING:
    from ..config import Config

DEFAULT_CONFIGS = ("etcdvisor.yaml", "/etc/etcdvisor.yaml")
FOLLOW_INTERVAL = 0.1  # seconds between two looks at followed files
RESCAN_EVERY = 10      # look for new per-index files every this many intervals
_CHUNK = 1 << 20


def add_verbs(subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
              common: argparse.ArgumentParser) -> None:
    """logs (it takes ``-c`` for the member's config, not a cluster)."""
    logs = subparsers.add_parser("logs", help="print a role's log file(s) on this member (stdout/stderr: {file: ...})")
    logs.add_argument("role", metavar="ROLE")
    logs.add_argument("--index", type=int, metavar="I", help="the file of the child with INDEX I ({index} in file)")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing, across rotations, until interrupted")
    logs.add_argument("-c", "--config", metavar="CONFIG",
                      help="the member's config (default: ./etcdvisor.yaml, else /etc/etcdvisor.yaml)")
    logs.set_defaults(func=cmd_logs)


def cmd_logs(args: argparse.Namespace) -> int:
    try:
        sources = role_log_sources(args.config, args.role, args.index)
    except UsageError as exc:
        error(exc)
        return EXIT_USAGE
    out = sys.stdout.buffer
    try:
        if args.follow:
            follow(sources, out, threading.Event())
            return EXIT_OK
        return print_current(sources, out)
    except KeyboardInterrupt:
        return EXIT_OK
    except BrokenPipeError:  # `supervisor logs x | head`
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK


def _load(config_path: str | None) -> Config:
    from ..config import ConfigError, load

    if config_path is None:
        config_path = next((p for p in DEFAULT_CONFIGS if os.path.isfile(p)), None)
        if config_path is None:
            raise UsageError(f"no config: pass -c CONFIG (neither {' nor '.join(DEFAULT_CONFIGS)} exists)")
    try:
        return load(config_path)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None


class Sources:
    """The files of one role, stdout's first: fixed paths, and templates with
    ``{index}`` left open (``scan()`` lists the files that exist for them, by index)."""

    def __init__(self) -> None:
        # a fixed path, or (glob, regex with maybe a group "index")
        self.entries: list[str | tuple[str, re.Pattern[str]]] = []

    @property
    def several(self) -> bool:
        """True if the role can have more than one file here (then headers are printed)."""
        return len(self.entries) > 1 or any(not isinstance(e, str) for e in self.entries)

    def scan(self) -> list[str]:
        found: list[str] = []
        for entry in self.entries:
            if isinstance(entry, str):
                found.append(entry)
                continue
            pattern, regex = entry
            matches = []
            for path in glob.glob(pattern):
                match = regex.fullmatch(path)
                if match is not None:
                    number = match.groupdict().get("index")
                    matches.append((int(number) if number is not None else 0, path))
            found.extend(path for _, path in sorted(matches))
        return list(dict.fromkeys(found))

    def describe(self) -> str:
        return ", ".join(e if isinstance(e, str) else e[0] for e in self.entries)


def role_log_sources(config_path: str | None, role_name: str, index: int | None) -> Sources:
    """Where ``role_name``'s stdout/stderr files are on this member (UsageError if none)."""
    if index is not None and index < 0:
        raise UsageError(f"--index must be >= 0, got {index}")
    config = _load(config_path)
    try:
        role = config.role(role_name)
    except KeyError as exc:
        raise UsageError(exc.args[0]) from None
    outputs = [o for o in (role.stdout, role.stderr) if o is not None]
    if not outputs:
        raise UsageError(f"role {role_name} has no log file (stdout and stderr are inherit: its lines "
                         f"are in the supervisor's own output; set stdout: {{file: PATH}} to get one)")
    cwd, member = config.role_cwd(role), config.member.id
    sources = Sources()
    # open placeholders: {index} without --index; {member} when the member id is made up
    # at each start (host name + random suffix): any member's file on this host matches
    open_member = config.member.id_generated and "{member}" in "".join(o.file for o in outputs)
    for output in outputs:
        open_index = output.per_index and index is None
        if open_index or (open_member and "{member}" in output.file):
            index_marker, member_marker = "\0index\0", "\0member\0"
            template = output.path(cwd, role=role.name, member=member_marker if open_member else member,
                                   index=index_marker if open_index else (index or 0))
            regex = re.compile(re.escape(template).replace(re.escape(index_marker), r"(?P<index>\d+)")
                               .replace(re.escape(member_marker), r"[A-Za-z0-9_.-]+"))
            pattern = glob.escape(template).replace(glob.escape(index_marker), "*")
            entry: str | tuple[str, re.Pattern[str]] = (pattern.replace(glob.escape(member_marker), "*"), regex)
        else:
            entry = output.path(cwd, role=role.name, member=member, index=0 if index is None else index)
        if entry not in sources.entries:  # stdout and stderr to the same file
            sources.entries.append(entry)
    return sources


class Follower:
    """Reads one path to its end, again and again, across rotations (see module)."""

    def __init__(self, path: str, *, waited_since: float | None = None):
        self.path = path
        self._handle: BinaryIO | None = None
        self._inode: int | None = None
        # the file did not exist at this time (wall clock): when it appears, backups
        # rotated since then are read first (the file may have rotated before we looked)
        self._waited_since = waited_since

    def read(self, *, follow: bool) -> bytes:
        """Bytes not read yet (b"" at the end); with ``follow``, at the end look whether
        the path now names another file (rotated: drain the old one, open the new) or a
        shorter one (truncated: start over)."""
        if self._handle is None and not self._open():
            return b""
        assert self._handle is not None
        if self._waited_since is not None:
            since, self._waited_since = self._waited_since, None
            early = b"".join(_read_all(p) for p in self._backups_since(since))
            if early:
                return early
        data = self._handle.read(_CHUNK)
        if data or not follow:
            return data
        try:
            info = os.stat(self.path)
        except OSError:
            return b""  # renamed away, the new file not there yet: keep the old one
        if info.st_ino != self._inode:
            rest = self._handle.read()  # what was written before the rename
            rest += b"".join(_read_all(p) for p in self._newer_backups())
            self.close()
            return rest or self.read(follow=True)
        if info.st_size < self._handle.tell():
            self._handle.seek(0)
        return b""

    def _newer_backups(self) -> list[str]:
        """Backups newer than the file being read, oldest first: the files rotated past
        while this reader was behind (none if it is not found among the backups)."""
        from ..config.output import MAX_BACKUPS
        from ..process.logfile import backup_path

        newer: list[str] = []
        for number in range(1, MAX_BACKUPS + 2):
            path = backup_path(self.path, number)
            try:
                if os.stat(path).st_ino == self._inode:
                    return newer[::-1]
            except OSError:
                return []
            newer.append(path)
        return []

    def _backups_since(self, since: float) -> list[str]:
        """Backups last written at or after ``since`` and older than the file opened,
        oldest first. The opened file may itself have been rotated since it was opened
        (it is then among the backups): the backups newer than it are read later, as
        any rotation's are, and it is read through the open handle, not twice."""
        from ..config.output import MAX_BACKUPS
        from ..process.logfile import backup_path

        found: list[str] = []
        for number in range(1, MAX_BACKUPS + 1):
            try:
                info = os.stat(backup_path(self.path, number))
            except OSError:
                break
            if info.st_ino == self._inode:
                found = []  # newer than the opened file: not early
                continue
            if info.st_mtime < since:
                break
            found.append(backup_path(self.path, number))
        return found[::-1]

    def _open(self) -> bool:
        try:
            self._handle = open(self.path, "rb")  # noqa: SIM115 (kept open while following)
        except OSError:
            return False
        self._inode = os.fstat(self._handle.fileno()).st_ino
        return True

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def _read_all(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError:
        return b""


class _Printer:
    """Writes chunks, with a ``==> PATH <==`` header when the source changes (several files)."""

    def __init__(self, out: BinaryIO, headers: bool):
        self.out, self.headers = out, headers
        self.last: str | None = None

    def write(self, path: str, data: bytes) -> None:
        if self.headers and path != self.last:
            self.out.write(("\n" if self.last is not None else "").encode() + f"==> {path} <==\n".encode())
        self.last = path
        self.out.write(data)
        self.out.flush()


def print_current(sources: Sources, out: BinaryIO) -> int:
    paths = [p for p in sources.scan() if os.path.exists(p)]
    if not paths:
        print(f"error: no log file yet ({sources.describe()}): no child of the role has written "
              "output on this member", file=sys.stderr, flush=True)
        return EXIT_FAIL
    printer = _Printer(out, headers=sources.several)
    for path in paths:
        follower = Follower(path)
        while data := follower.read(follow=False):
            printer.write(path, data)
        follower.close()
    return EXIT_OK


def follow(sources: Sources, out: BinaryIO, stop: threading.Event) -> None:
    """Print the current files, then what is appended, until ``stop`` is set (or ^C)."""
    followers: dict[str, Follower] = {}
    printer = _Printer(out, headers=sources.several)
    rounds, started = 0, time.time()
    try:
        while not stop.is_set():
            if rounds % RESCAN_EVERY == 0:
                for path in sources.scan():
                    if path not in followers:  # a file that appeared after the start was waited for
                        present = rounds == 0 and os.path.exists(path)
                        followers[path] = Follower(path, waited_since=None if present else started)
            rounds += 1
            busy = False
            for path, follower in followers.items():
                while data := follower.read(follow=True):
                    printer.write(path, data)
                    busy = True
            if not busy:
                stop.wait(FOLLOW_INTERVAL)
    finally:
        for follower in followers.values():
            follower.close()
