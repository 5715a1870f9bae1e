"""The watchdog helper process (see ``etcdvisor.process.watchdog`` for the design).

Run as ``python -m etcdvisor.process.watchdog_main`` with a pipe on stdin. Imports only
os, sys, signal, select and time, to stay small. Protocol: one command per line,
``-`` stands for "no deadline", times are CLOCK_MONOTONIC seconds (time.monotonic())::

    R <pgid> <signal> <term_at> <kill_at>   register (or replace) a process group
    E <pgid> <term_at> <kill_at>            extend (replace) the deadlines of a group
    U <pgid>                                forget a group
    C                                       forget every group (before a full replay)
    Q                                       exit quietly, killing nothing

At ``term_at`` the group gets its stop signal, at ``kill_at`` SIGKILL (then it is
forgotten). On EOF of stdin (the supervisor died, even by SIGKILL) every registered
group gets SIGKILL at once and the helper exits.
"""

import os
import select
import signal
import sys
import time


def _deadline(text):
    return None if text == "-" else float(text)


def _signal_group(pgid, signum):
    try:
        os.killpg(pgid, signum)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _apply(table, line):
    """Apply one command line; return False when told to quit."""
    parts = line.split()
    if not parts:
        return True
    op = parts[0]
    if op == "Q":
        return False
    if op == "R" and len(parts) == 5:
        table[int(parts[1])] = [_deadline(parts[3]), _deadline(parts[4]), int(parts[2])]
    elif op == "E" and len(parts) == 4:
        entry = table.get(int(parts[1]))
        if entry is not None:
            entry[0], entry[1] = _deadline(parts[2]), _deadline(parts[3])
    elif op == "C":
        table.clear()
    elif op == "U" and len(parts) == 2:
        table.pop(int(parts[1]), None)
    return True


def _fire_due(table, now):
    """Send due signals; return the next deadline or None."""
    next_due = None
    for pgid in list(table):
        term_at, kill_at, signum = table[pgid]
        if kill_at is not None and now >= kill_at:
            _signal_group(pgid, signal.SIGKILL)
            del table[pgid]
            continue
        if term_at is not None and now >= term_at:
            if not _signal_group(pgid, signum) and kill_at is None:
                del table[pgid]  # group gone and nothing left to enforce
                continue
            table[pgid][0] = term_at = None
        for due in (term_at, kill_at):
            if due is not None and (next_due is None or due < next_due):
                next_due = due
    return next_due


def main():
    # A terminal Ctrl-C or a hangup is not for us: only EOF or "Q" ends the helper.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    table = {}
    pending = b""
    while True:
        next_due = _fire_due(table, time.monotonic())
        timeout = None if next_due is None else max(0.0, next_due - time.monotonic())
        readable, _, _ = select.select([0], [], [], timeout)
        if not readable:
            continue
        data = os.read(0, 65536)
        if not data:
            for pgid in table:
                _signal_group(pgid, signal.SIGKILL)
            return 0
        pending += data
        *lines, pending = pending.split(b"\n")
        for line in lines:
            try:
                if not _apply(table, line.decode("ascii")):
                    return 0
            except (ValueError, UnicodeDecodeError):
                sys.stderr.write(f"etcdvisor watchdog: bad command {line!r}\n")


if __name__ == "__main__":
    sys.exit(main())
