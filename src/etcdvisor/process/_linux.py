"""prctl(2) through ctypes: parent-death signal and child subreaper (Linux only)."""

import ctypes
import os

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
PR_GET_CHILD_SUBREAPER = 37

# Resolved once in the parent: the post-fork child setup only calls the function.
_libc = ctypes.CDLL(None, use_errno=True)
_prctl = _libc.prctl
_prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_prctl.restype = ctypes.c_int


def prctl(option: int, arg2: int = 0) -> int:
    """Call prctl(option, arg2); raise OSError on failure, return the result otherwise."""
    result = _prctl(option, arg2, 0, 0, 0)
    if result == -1:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(result)


def prctl_get_int(option: int) -> int:
    """Call a prctl GET option that stores an int through its second argument."""
    value = ctypes.c_int(0)
    result = _prctl(option, ctypes.addressof(value), 0, 0, 0)
    if result == -1:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return value.value


def scrub_initial_environ(name: str) -> bool:
    """Blank ``name=value`` in this process's *initial* environment block (the strings the
    kernel shows in ``/proc/<pid>/environ``, which ``unsetenv`` leaves in place, and which a
    forked child shows too until it execs). Call after removing ``name`` from ``os.environ``:
    nothing references those bytes any more. True if an entry was blanked; best effort (the
    block's bounds come from ``/proc/self/stat``, fields 50-51, Linux >= 3.5)."""
    try:
        with open("/proc/self/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
        start, end = int(fields[47]), int(fields[48])  # env_start, env_end (fields 50, 51)
    except (OSError, IndexError, ValueError):
        return False
    if not 0 < start < end or end - start > 1 << 24:
        return False
    block = ctypes.string_at(start, end - start)
    prefix = name.encode() + b"="
    offset, found = 0, False
    for entry in block.split(b"\0"):
        if entry.startswith(prefix):
            ctypes.memset(start + offset, 0, len(entry))
            found = True
        offset += len(entry) + 1
    return found
