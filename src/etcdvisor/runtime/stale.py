"""Members of a previous run that are known dead: their leases are revoked at start.

After an etcd restart (the quickstart's embedded etcd, stopped with the member that
hosted it), etcd restores every lease with its TTL: a member of the previous run that
died meanwhile looks alive until its lease expires, and its shard position, alive
record and election key hold the others back (or make them start with a COUNT that
counts the dead). A member record carries who wrote it (``host``, ``pid``, and the
identity below), so a starting member can tell that some of them are gone for sure.

A record is *known dead* only when all of these hold (anything else: unknown, never
revoked, its lease runs out as usual):

* it was written on this machine since this boot (same ``host`` and ``boot`` id, read
  from ``/proc/sys/kernel/random/boot_id``) and in this pid namespace (``pidns``, the
  inode of ``/proc/self/ns/pid``): its pids mean the same here;
* its supervisor's pid is not running, or runs a process that started at another
  time (``pid_start``, clock ticks since boot: the pid was reused);
* the same for its watchdog (``watchdog``, ``watchdog_start``), which kills the
  dead supervisor's children: once it is gone too, no child of that member is left;
* and, to be sure, no process readable here carries the marker of one of its children
  (``ETCDVISOR_CHILD_TAG`` with its ``ETCDVISOR_MEMBER_ID`` and ``ETCDVISOR_CLUSTER``).

A frozen (SIGSTOPped) or still-exiting member is a running pid: never revoked. A
record of this member's own id on another lease is handled the same way (a restart
after a crash need not wait out the old lease); when it is not known dead the start
is refused as before (two live members must never share an id).

Members whose liveness cannot be known (another host, another container) but whose
lease has not been renewed for a while get one INFO line at start saying what the
roles will wait for.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from ..coord.base import Backend
from ..coord.errors import CoordError, PermissionDenied
from ..coord.records import MEMBER, RecordError
from ..coord.types import prefix_end

log = logging.getLogger("etcdvisor")


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as fh:
            return fh.read().strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def process_start(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (None: no such process here, or
    a zombie: it has exited and only waits to be reaped)."""
    stat = _read(f"/proc/{pid}/stat")
    if stat is None:
        return None
    try:  # the command name (field 2) may hold spaces and parentheses: split after the last ')'
        fields = stat.rsplit(")", 1)[1].split()
        return None if fields[0] in ("Z", "X") else int(fields[19])
    except (IndexError, ValueError):
        return None


def identity(pid: int | None = None) -> dict[str, Any]:
    """What a member record carries so that a later start on this machine can tell
    whether its writer is gone (empty values where /proc does not say)."""
    pid = os.getpid() if pid is None else pid
    try:
        pidns: str | None = os.readlink("/proc/self/ns/pid")
    except OSError:
        pidns = None
    return {"boot": _read("/proc/sys/kernel/random/boot_id"), "pidns": pidns, "pid_start": process_start(pid)}


def _gone(pid: Any, started: Any, running: Callable[[int], int | None]) -> bool:
    if not isinstance(pid, int) or pid <= 0 or not isinstance(started, int):
        return False
    now = running(pid)
    return now is None or now != started


def known_dead(doc: dict[str, Any], here: dict[str, Any],
               running: Callable[[int], int | None] = process_start) -> bool:
    """Is the member that wrote ``doc`` (a decoded member record) gone for sure?
    ``here``: :func:`identity` plus ``host`` and ``pid`` of this process."""
    for field in ("host", "boot", "pidns"):
        if not here.get(field) or doc.get(field) != here[field]:
            return False
    if doc.get("pid") == here.get("pid"):
        return False
    if not _gone(doc.get("pid"), doc.get("pid_start"), running):
        return False
    if doc.get("watchdog") is not None and not _gone(doc.get("watchdog"), doc.get("watchdog_start"), running):
        return False
    return True


MAX_TTL_CHECKS = 32  # lease look-ups at start for the stale-member line (a big fleet: the first 32)


def children_left(cluster: str, member: str, proc: str = "/proc") -> list[int]:
    """Pids on this host (readable here) of children a supervisor of ``member`` in
    ``cluster`` started: their environment has the tracking marker and those ids."""
    marks = (b"\0ETCDVISOR_CHILD_TAG=", f"\0ETCDVISOR_MEMBER_ID={member}\0".encode(),
             f"\0ETCDVISOR_CLUSTER={cluster}\0".encode())
    found = []
    try:
        names = [n for n in os.listdir(proc) if n.isdigit()]
    except OSError:
        return []
    for name in names:
        try:
            with open(os.path.join(proc, name, "environ"), "rb") as fh:
                env = b"\0" + fh.read(1 << 20) + b"\0"
        except OSError:
            continue
        if all(mark in env for mark in marks):
            found.append(int(name))
    return found


MAX_RECORDS_READ = 64  # member records read at start (a big fleet: these and our own id's)


def clear_dead_members(backend: Backend, members_prefix: str, cluster: str = "", *,
                       stale_after: float = 3.0, member_id: str | None = None) -> list[str]:
    """(Start-up, before joining) Revoke the leases of member records known dead;
    say once which other members look stale. Returns the ids whose lease was revoked.
    Store errors are warnings: the start goes on (those leases then expire as usual).

    Reads at most :data:`MAX_RECORDS_READ` records, plus the one of ``member_id`` (a
    restart of this member after a crash): every member of a fleet of a thousand starting
    at once and reading every record would move N^2 records out of etcd (about a
    gigabyte). Beyond them nothing is revoked: those leases expire as usual."""
    here = {**identity(), "host": socket.gethostname(), "pid": os.getpid()}
    try:
        result = backend.range(members_prefix, prefix_end(members_prefix), limit=MAX_RECORDS_READ)
        kvs = list(result.kvs)
        own = members_prefix + member_id if member_id else None
        if own is not None and result.count > len(kvs) and all(kv.key != own for kv in kvs):
            found = backend.get(own)
            kvs += [found] if found is not None else []
    except PermissionDenied:  # joining fails next, with the one error line that names the key
        return []
    except CoordError as exc:
        log.warning("cannot read the member records to find members of a previous run: %s", exc)
        return []
    if result.count > len(kvs):
        log.debug("%d member records; checked %d of them for members of a previous run", result.count, len(kvs))
    revoked, stale = [], []
    checks = MAX_TTL_CHECKS
    starts: dict[int, int | None] = {}  # pid -> start time: read once per pid (a fleet shares few hosts' pids)

    def running(pid: int) -> int | None:
        if pid not in starts:
            starts[pid] = process_start(pid)
        return starts[pid]
    for kv in kvs:
        member = kv.key[len(members_prefix):]
        try:
            doc = MEMBER.decode(kv.value)
        except RecordError:
            continue  # the decoder's readers warn about it; never act on garbage
        if not kv.lease:
            continue
        try:
            dead = known_dead(doc, here, running)
            left = children_left(cluster, member) if cluster and dead else []
            if left:
                log.info("member %s of a previous run is gone but %d of its children still run (pids %s): "
                         "its lease is left to expire", member, len(left), ", ".join(map(str, left[:8])))
            elif dead:
                backend.lease_revoke(kv.lease)
                revoked.append(member)
                log.info("member %s of a previous run (host %s, pid %s) is gone: revoked its lease %x, "
                         "so its shards and leaderships are free now", member, doc.get("host"), doc.get("pid"),
                         kv.lease)
                continue
            ttl, started = doc.get("ttl"), doc.get("started")
            if not isinstance(ttl, int) or checks <= 0:
                continue
            if isinstance(started, (int, float)) and time.time() - started < ttl:
                continue  # started within its ttl (a fleet starting together): no lease look-up
            checks -= 1
            remaining = backend.lease_ttl(kv.lease)
            if 0 < remaining < ttl - stale_after:
                stale.append(f"{member} (host {doc.get('host')}, pid {doc.get('pid')}, "
                             f"not renewed for {ttl - remaining}s, expires in {remaining}s)")
        except CoordError as exc:
            log.warning("member %s: cannot check or revoke its lease: %s", member, exc)
    if stale:
        log.info("waiting on members that stopped renewing their lease (a previous run?): %s; "
                 "their shards and leaderships are held until their leases expire", "; ".join(stale))
    return revoked
