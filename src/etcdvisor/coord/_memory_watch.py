"""Internals of :mod:`etcdvisor.coord.memory`: key encoding, etcd's request
checks and compare rules, the MVCC key history, the event log and the watch
stream.

Nothing here takes the store lock; :class:`~etcdvisor.coord.memory.MemoryStore`
calls these helpers while holding it. A :class:`MemoryWatchStream` only has its
own Condition, so a slow consumer never blocks a writer (lock order: store,
then stream).
"""

from __future__ import annotations

import bisect
import operator
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import Any, Self

from .base import WatchStream
from .errors import CoordError
from .types import Compare, Delete, Event, EventType, Get, KeyValue, Op, Put, WatchBatch

MAX_TXN_OPS = 128  # etcd --max-txn-ops default
MAX_REQUEST_BYTES = 1536 * 1024  # etcd --max-request-bytes default (keys + values counted)
MAX_LEASE_TTL = 9_000_000_000  # etcd's MaxLeaseTTL
_OPS: dict[str, Callable[[Any, Any], bool]] = {"=": operator.eq, "!=": operator.ne, "<": operator.lt, ">": operator.gt}

#: one change of one revision: (encoded key, event as it happened, prev_kv included)
Change = tuple[bytes, Event]


def encode_key(key: str) -> bytes:
    """The key's wire bytes; byte order of these is etcd's key order."""
    try:
        return key.encode("utf-8", "surrogateescape")
    except (UnicodeEncodeError, AttributeError):
        raise CoordError(f"invalid key {key!r}: not encodable as UTF-8") from None


def encode_end(end: str | None) -> bytes | None:
    """Range end as etcd reads it: None/"" = single key, b"\\0" = no upper bound."""
    return None if end is None or end == "" else encode_key(end)


def in_range(key: bytes, start: bytes, end: bytes | None) -> bool:
    if end is None:
        return key == start
    if end == b"\0":
        return key >= start
    return start <= key < end


def range_keys(key: str, end: str | None) -> tuple[bytes, bytes | None]:
    encoded = encode_key(key)
    if not encoded:
        raise CoordError("etcdserver: key is not provided")
    return encoded, encode_end(end)


def compare_holds(kv: KeyValue | None, cmp: Compare) -> bool:
    if cmp.target == "value":
        # etcd: a value compare on a missing key is false whatever the op
        return kv is not None and _OPS[cmp.op](kv.value, cmp.operand)
    if isinstance(cmp.operand, bool) or not isinstance(cmp.operand, int):
        raise CoordError(f"compare {cmp.target} of {cmp.key!r}: operand must be an int")
    actual = 0 if kv is None else {"version": kv.version, "create": kv.create_revision,
                                   "mod": kv.mod_revision, "lease": kv.lease}[cmp.target]
    return _OPS[cmp.op](actual, cmp.operand)


def validate_txn(compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op]) -> None:
    """etcd's request checks, applied to both branches whichever runs."""
    if max(len(compares), len(success), len(failure)) > MAX_TXN_OPS:
        raise CoordError("etcdserver: too many operations in txn request")
    size = sum(len(range_keys(c.key, None)[0]) for c in compares)
    for ops in (success, failure):
        puts: set[bytes] = set()
        deletes: list[tuple[bytes, bytes | None]] = []
        for op in ops:
            if not isinstance(op, (Put, Delete, Get)):
                raise TypeError(f"unknown txn op {op!r}")
            key, end_key = range_keys(op.key, op.range_end if not isinstance(op, Put) else None)
            size += len(key) + (len(op.value) if isinstance(op, Put) else 0)
            if isinstance(op, Put):
                if key in puts:
                    raise CoordError("etcdserver: duplicate key given in txn request")
                puts.add(key)
            elif isinstance(op, Delete):
                deletes.append((key, end_key))
        if any(in_range(k, s, e) for k in puts for s, e in deletes):
            raise CoordError("etcdserver: duplicate key given in txn request")
    if size > MAX_REQUEST_BYTES:
        raise CoordError("etcdserver: request is too large")


class KeySpace:
    """Every key's history of versions, for reads at any kept revision.

    Each key maps to a list of ``(revision, KeyValue | None)`` in revision
    order, None marking a deletion (etcd's tombstone). ``ordered`` holds every
    key that has history, sorted by bytes, for range scans.
    """

    def __init__(self) -> None:
        self.history: dict[bytes, list[tuple[int, KeyValue | None]]] = {}
        self.ordered: list[bytes] = []

    def live(self, key: bytes) -> KeyValue | None:
        versions = self.history.get(key)
        return versions[-1][1] if versions else None

    def at(self, key: bytes, revision: int) -> KeyValue | None:
        versions = self.history.get(key)
        if not versions:
            return None
        i = bisect.bisect_right(versions, revision, key=lambda entry: entry[0])
        return versions[i - 1][1] if i else None

    def keys_between(self, start: bytes, end: bytes | None) -> list[bytes]:
        if end is None:
            return [start] if start in self.history else []
        lo = bisect.bisect_left(self.ordered, start)
        hi = len(self.ordered) if end == b"\0" else bisect.bisect_left(self.ordered, end)
        return self.ordered[lo:hi] if hi > lo else []

    def record(self, key: bytes, revision: int, kv: KeyValue | None) -> None:
        versions = self.history.get(key)
        if versions is None:
            versions = self.history[key] = []
            bisect.insort(self.ordered, key)
        versions.append((revision, kv))

    def compact(self, revision: int) -> None:
        """Keep, per key, the newest version at or before ``revision`` (unless
        it is a deletion) and everything after, like etcd's keyIndex.compact."""
        emptied = []
        for key, versions in self.history.items():
            i = bisect.bisect_right(versions, revision, key=lambda entry: entry[0])
            if i == 0:
                continue
            keep_from = i - 1 if versions[i - 1][1] is not None else i
            del versions[:keep_from]
            if not versions:
                emptied.append(key)
        for key in emptied:
            del self.history[key]
            self.ordered.pop(bisect.bisect_left(self.ordered, key))


class EventLog:
    """The changes of every kept revision, for watches that start in the past."""

    def __init__(self) -> None:
        self.entries: list[tuple[int, tuple[Change, ...]]] = []

    def append(self, revision: int, changes: tuple[Change, ...]) -> None:
        self.entries.append((revision, changes))

    def since(self, revision: int) -> list[tuple[int, tuple[Change, ...]]]:
        i = bisect.bisect_left(self.entries, revision, key=lambda entry: entry[0])
        return self.entries[i:]

    def compact(self, revision: int) -> None:
        """Drop revisions before ``revision``. At ``revision`` itself etcd
        keeps the put versions but drops the tombstones, so a watch from the
        compact revision sees that revision's puts but not its deletes."""
        i = bisect.bisect_left(self.entries, revision, key=lambda entry: entry[0])
        del self.entries[:i]
        if self.entries and self.entries[0][0] == revision:
            puts = tuple(c for c in self.entries[0][1] if c[1].type is EventType.PUT)
            if puts:
                self.entries[0] = (revision, puts)
            else:
                del self.entries[0]


class MemoryWatchStream(WatchStream):
    """One watch on a memory store. The store pushes batches into this
    stream's unbounded deque; iteration pops them (blocking while empty).

    Ends (StopIteration) after :meth:`cancel` or when its backend closes,
    discarding undelivered batches. A failure (``Compacted`` at start, an
    injected ``Unavailable``) is raised once, then the stream is over.
    """

    def __init__(self, start: bytes, end: bytes | None, start_revision: int, *,
                 prev_kv: bool, progress_notify: bool,
                 on_cancel: Callable[[MemoryWatchStream], None]):
        self.start = start
        self.end = end
        self.start_revision = start_revision
        self.prev_kv = prev_kv
        self.progress_notify = progress_notify
        self._on_cancel = on_cancel
        self._cond = threading.Condition()
        self._pending: deque[WatchBatch] = deque()
        self._error: CoordError | None = None
        self._finished = False

    # --- called by the store (store lock held) ----------------------------
    def offer(self, revision: int, changes: tuple[Change, ...], header_revision: int,
              drop_prev_kv: bool = False) -> None:
        """Queue the events of one revision that fall in this watch's range."""
        if revision < self.start_revision:
            return
        events = []
        for key, event in changes:
            if not in_range(key, self.start, self.end):
                continue
            if (not self.prev_kv or drop_prev_kv) and event.prev_kv is not None:
                event = replace(event, prev_kv=None)
            events.append(event)
        if events:
            self._push(WatchBatch(events=tuple(events), revision=header_revision))

    def progress(self, revision: int) -> None:
        if self.progress_notify:
            self._push(WatchBatch(events=(), revision=revision))

    def fail(self, error: CoordError) -> None:
        """Make iteration raise ``error`` next (undelivered batches are lost,
        as with a dropped connection)."""
        with self._cond:
            if not self._finished:
                self._pending.clear()
                self._error = error
                self._cond.notify_all()

    def finish(self) -> None:
        with self._cond:
            self._finished = True
            self._pending.clear()
            self._cond.notify_all()

    def _push(self, batch: WatchBatch) -> None:
        with self._cond:
            if not self._finished and self._error is None:
                self._pending.append(batch)
                self._cond.notify_all()

    # --- consumer side -------------------------------------------------------
    def __iter__(self) -> Iterator[WatchBatch]:
        return self

    def __next__(self) -> WatchBatch:
        with self._cond:
            while True:
                if self._finished:
                    raise StopIteration
                if self._error is not None:
                    error, self._error = self._error, None
                    self._finished = True
                    self._pending.clear()
                    raise error
                if self._pending:
                    return self._pending.popleft()
                self._cond.wait()

    def cancel(self) -> None:
        """Stop the watch; safe to call twice and from any thread."""
        self.finish()
        self._on_cancel(self)  # takes the store lock: never call with self._cond held

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()
