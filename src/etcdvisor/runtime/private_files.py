"""Files the supervisor writes for its children: where they may go, and
what is left behind (docs/safety.md, rule 7).

* :func:`write_confined` -- a peers file is written only inside its role's
  working directory: the path is checked lexically by ``validate``
  (config/wiring.py) and again here, after resolving symlinks, before any
  directory is made; :class:`PathEscape` (naming the key) otherwise.
* :func:`make_config_dir` -- the private directory (mode 0700) of the
  children's config files, named after its owner:
  ``etcdvisor-config-<member>-<hash>-<pid>.<start>-<random>`` in the temp
  directory (``TMPDIR``). ``<hash>`` is of cluster and member, ``<pid>`` and
  ``<start>`` (the kernel's start time of that process) identify the owning
  supervisor, so a pid reused (a container's PID 1 after a restart) is not
  taken for the owner.
* :func:`remove_stale_config_dirs` -- at start, remove such directories of
  this cluster and member whose owner is dead; a live owner's (another
  process of the same member id) is kept. Directories of other members,
  other users, or symlinks are never touched. The watchdog helper removes
  the directory when the supervisor dies (process/watchdog.py), this is for
  what even the helper could not remove (the whole container killed).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import stat
import tempfile

log = logging.getLogger("etcdvisor")

CONFIG_DIR_PREFIX = "etcdvisor-config-"


def write_atomically(path: str, data: bytes, *, make_dirs: bool = True) -> None:
    """Replace ``path`` with ``data`` (a reader sees the old or the new file)."""
    directory = os.path.dirname(path)
    if make_dirs:
        os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


class PathEscape(ValueError):
    """A file the supervisor was to write resolves outside its directory."""


def write_confined(root: str, relative: str, data: bytes, *, key: str) -> None:
    """Replace ``root``/``relative`` with ``data`` atomically, refusing a path
    that resolves outside ``root`` (``..``, an absolute path elsewhere, a
    symlinked directory); ``key`` names the config key in the error."""
    real_root = os.path.realpath(root)
    target = os.path.join(root, relative)
    parent = os.path.dirname(os.path.normpath(target))

    def check() -> None:
        resolved = os.path.realpath(parent)
        if os.path.commonpath([real_root, resolved]) != real_root:
            raise PathEscape(f"{key}: {relative!r} resolves to {os.path.join(resolved, os.path.basename(target))}, "
                             f"outside the role's working directory {real_root}; not written")

    check()  # before makedirs: never create a directory outside root
    os.makedirs(parent, exist_ok=True)
    check()  # a symlink swapped in meanwhile
    # the last component may be a symlink: rename replaces the link itself, never its target
    write_atomically(os.path.join(parent, os.path.basename(target)), data, make_dirs=False)


def owner_tag(cluster: str, member: str) -> str:
    """The start of the name of every config directory of ``member`` of ``cluster``."""
    safe = re.sub(r"[^A-Za-z0-9_.]", "_", member)[:40]
    digest = hashlib.sha1(f"{cluster}\0{member}".encode()).hexdigest()[:8]
    return f"{CONFIG_DIR_PREFIX}{safe}-{digest}-"


def process_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (clock ticks since boot, from
    /proc), or None when there is no such process (or no /proc)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            text = handle.read().decode("ascii", "replace")
    except OSError:
        return None
    fields = text.rpartition(")")[2].split()
    return fields[19] if len(fields) > 19 else None


def make_config_dir(cluster: str, member: str) -> str:
    """A fresh private directory owned by this process (see module docstring)."""
    pid = os.getpid()
    prefix = f"{owner_tag(cluster, member)}{pid}.{process_start(pid) or 0}-"
    return tempfile.mkdtemp(prefix=prefix)


def _owner_alive(pid: int, start: str) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: alive
    current = process_start(pid)
    return current is None or start == "0" or current == start


def remove_stale_config_dirs(cluster: str, member: str, directory: str | None = None) -> list[str]:
    """Remove this member's config directories whose owning supervisor is
    dead (see module docstring); return the paths removed."""
    directory = directory or tempfile.gettempdir()
    tag = owner_tag(cluster, member)
    owner = re.compile(r"(\d+)\.(\d+)-[^-/]*")
    removed: list[str] = []
    try:
        names = [n for n in os.listdir(directory) if n.startswith(tag)]
    except OSError:
        return removed
    for name in names:
        match = owner.fullmatch(name[len(tag):])
        if match is None or _owner_alive(int(match.group(1)), match.group(2)):
            continue
        path = os.path.join(directory, name)
        try:
            info = os.lstat(path)
        except OSError:
            continue
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
            continue  # a symlink, a file, or someone else's: not ours to remove
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    if removed:
        log.info("removed %d stale config file director%s of member %s (their supervisor is gone): %s",
                 len(removed), "y" if len(removed) == 1 else "ies", member, ", ".join(removed))
    return removed
