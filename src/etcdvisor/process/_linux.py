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
