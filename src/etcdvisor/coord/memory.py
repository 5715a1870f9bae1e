"""In-process coordination backend with etcd v3 semantics, for tests.

Guarantees (the same contract as the etcd backend, see :mod:`.base`):

* one store-wide revision, starting at 1 like a fresh etcd; a write txn that
  changes something takes exactly one new revision, shared by all its ops;
  a txn that only reads, or deletes nothing, takes none;
* create/mod revision and version per key; reads at any kept revision;
  ``compact`` discards older history (reads/watches there raise ``Compacted``);
* compares, duplicate-key checks, the lease check of a Put and empty-key
  errors behave like etcd 3.5; revoking or expiring a lease deletes its keys
  at one revision, each lease at its own;
* watches replay kept history from ``start_revision`` and then deliver live
  events, one batch per revision, each exactly once, in revision order. Each
  stream has its own unbounded queue, so a slow consumer never blocks writers.

Leases expire on the store's clock: with the real clock (``time.monotonic``)
a daemon thread per store wakes at the next lease deadline (only while leases
exist); with a :class:`FakeClock`, on :meth:`FakeClock.advance` and on any
backend call.

Limits: one process only (``memory://NAME`` names a store in this process);
nothing is persisted; history is kept until ``compact`` (memory grows with
writes); a lease gets the TTL asked for, at least 1s (etcd raises a TTL
below its minimum, about 2s, to that minimum); ``lease_ttl`` truncates the
remaining seconds like etcd; no auth; progress notifications only when
:meth:`MemoryStore.notify_progress` is called. Calls never wait for anything
but the store lock, so ``timeout`` is only recorded.

Fault injection for tests: :meth:`MemoryStore.fail_calls` (a partition: every
call raises ``Unavailable`` while leases keep expiring) and
:meth:`MemoryStore.break_watches` (every open watch raises ``Unavailable``).
"""

from __future__ import annotations

import copy
import itertools
import random
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from ._memory_watch import (
    MAX_LEASE_TTL,
    Change,
    EventLog,
    KeySpace,
    MemoryWatchStream,
    compare_holds,
    encode_end,
    encode_key,
    range_keys,
    validate_txn,
)
from .base import Backend, WatchStream
from .errors import Closed, Compacted, CoordError, LeaseNotFound, Unavailable
from .types import Compare, Delete, Event, EventType, KeyValue, Lease, Op, Put, RangeResult, TxnResult


class FakeClock:
    """A monotonic clock for tests: time moves only on :meth:`advance`, which
    expires due leases of every store using this clock at once."""

    def __init__(self, start: float = 1000.0):
        self._now = float(start)
        self._lock = threading.Lock()
        self._stores: weakref.WeakSet[MemoryStore] = weakref.WeakSet()

    def now(self) -> float:
        with self._lock:
            return self._now

    __call__ = now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a monotonic clock cannot go back")
        with self._lock:
            self._now += seconds
            stores = list(self._stores)
        for store in stores:  # clock lock released: stores take their own lock
            store.expire_leases()

    def _attach(self, store: MemoryStore) -> None:
        with self._lock:
            self._stores.add(store)


class _Lease:
    def __init__(self, lease_id: int, ttl: int, deadline: float):
        self.id = lease_id
        self.ttl = ttl
        self.deadline = deadline
        self.keys: set[bytes] = set()


_NAMED: dict[str, MemoryStore] = {}
_ANONYMOUS: weakref.WeakValueDictionary[str, MemoryStore] = weakref.WeakValueDictionary()
_REGISTRY_LOCK = threading.RLock()  # MemoryStore() registers itself
_ANONYMOUS_IDS = itertools.count(1)


class MemoryStore:
    """The shared state behind any number of :class:`MemoryBackend` handles.

    Every public method and every backend call runs under one lock, so each
    is atomic. ``clock`` is a zero-argument callable returning monotonic
    seconds (default ``time.monotonic``).
    """

    def __init__(self, clock: Callable[[], float] | None = None, *, name: str | None = None):
        self.clock = clock or time.monotonic
        self._cond = threading.Condition(threading.RLock())
        self._keys = KeySpace()
        self._log = EventLog()
        self._revision = 1
        self._compact_revision = 0
        self._leases: dict[int, _Lease] = {}
        self._lease_ids = random.Random()
        self._watchers: set[MemoryWatchStream] = set()
        self._failure: BaseException | None = None
        self._expiry_thread: threading.Thread | None = None
        self._real_time = not isinstance(self.clock, FakeClock)
        if hasattr(self.clock, "_attach"):
            self.clock._attach(self)
        with _REGISTRY_LOCK:  # so that open_backend(backend.url) finds this store
            if name is None:
                name = f"anonymous-{next(_ANONYMOUS_IDS)}"
            if name not in _NAMED and name not in _ANONYMOUS:
                _ANONYMOUS[name] = self  # weakly: dropped with the store
        self.name = name

    @classmethod
    def named(cls, name: str) -> MemoryStore:
        """The process-wide store called ``name``, created on first use and
        kept for the life of the process."""
        with _REGISTRY_LOCK:
            store = _NAMED.get(name) or _ANONYMOUS.get(name)
            if store is None:
                store = _NAMED[name] = cls(name=name)
            return store

    # --- test helpers ---------------------------------------------------------
    def fail_calls(self, error: BaseException | type[BaseException] | None = Unavailable) -> None:
        """Simulate a partition: from now on every backend call on this store
        raises ``error`` (an exception class or instance, default
        ``Unavailable``) until ``fail_calls(None)``. Leases keep expiring
        meanwhile; open watches stay open (see :meth:`break_watches`)."""
        if isinstance(error, type):
            error = error("memory store unavailable (injected fault)")
        with self._cond:
            self._failure = error

    def break_watches(self) -> None:
        """Simulate dropped watch streams: every open watch raises
        ``Unavailable`` at its next step (undelivered events are lost)."""
        with self._cond:
            watchers, self._watchers = self._watchers, set()
            for stream in watchers:
                stream.fail(Unavailable("watch stream broken (injected fault)"))

    def notify_progress(self) -> None:
        """Send an empty batch at the current revision to every watch opened
        with ``progress_notify`` (etcd sends these when idle, every 10 min)."""
        with self._cond:
            for stream in self._watchers:
                stream.progress(self._revision)

    def expire_leases(self) -> None:
        """Revoke every lease whose deadline has passed (runs on each call)."""
        with self._cond:
            now = self.clock()
            due = sorted((lease for lease in self._leases.values() if lease.deadline <= now),
                         key=lambda lease: (lease.deadline, lease.id))
            for lease in due:
                self._revoke(lease)

    # --- internals used by MemoryBackend (lock held) ------------------------
    def _check_failure(self) -> None:
        if self._failure is not None:
            raise copy.copy(self._failure)

    def _commit(self, changes: list[Change]) -> None:
        """Record one revision's changes and hand them to every watcher."""
        frozen = tuple(changes)
        self._log.append(self._revision, frozen)
        for stream in self._watchers:
            stream.offer(self._revision, frozen, self._revision)

    def _write(self, changes: list[Change], key: bytes, kv: KeyValue | None) -> None:
        """Apply one put (kv) or delete (None) at revision+1, keeping lease
        attachments and building the watch event."""
        rev = self._revision + 1
        prev = self._keys.live(key)
        if prev is not None and prev.lease in self._leases:
            self._leases[prev.lease].keys.discard(key)
        if kv is not None and kv.lease:
            self._leases[kv.lease].keys.add(key)
        self._keys.record(key, rev, kv)
        if kv is None:
            assert prev is not None, "callers delete only live keys"
            event = Event(EventType.DELETE, KeyValue(prev.key, b"", 0, rev, 0, 0), prev)
        else:
            event = Event(EventType.PUT, kv, prev)
        changes.append((key, event))

    def _put(self, changes: list[Change], op: Put) -> int:
        key = encode_key(op.key)
        prev = self._keys.live(key)
        rev = self._revision + 1
        kv = KeyValue(op.key, op.value, prev.create_revision if prev else rev, rev,
                      prev.version + 1 if prev else 1, op.lease)
        self._write(changes, key, kv)
        return rev

    def _delete(self, changes: list[Change], start: bytes, end: bytes | None) -> int:
        doomed = [k for k in self._keys.keys_between(start, end) if self._keys.live(k) is not None]
        for key in doomed:
            self._write(changes, key, None)
        return len(doomed)

    def _read(self, start: bytes, end: bytes | None, revision: int) -> list[KeyValue]:
        found = (self._keys.at(k, revision) for k in self._keys.keys_between(start, end))
        return [kv for kv in found if kv is not None]

    def _revoke(self, lease: _Lease) -> None:
        del self._leases[lease.id]
        changes: list[Change] = []
        for key in sorted(lease.keys):  # etcd deletes a lease's keys in key order
            self._write(changes, key, None)
        if changes:
            self._revision += 1
            self._commit(changes)

    def _new_lease(self, ttl: int) -> _Lease:
        lease_id = 0
        while lease_id == 0 or lease_id in self._leases:
            lease_id = self._lease_ids.getrandbits(62)  # etcd ids are large positive ints
        lease = self._leases[lease_id] = _Lease(lease_id, ttl, self.clock() + ttl)
        if self._real_time:
            self._ensure_expiry_thread()
        return lease

    def _ensure_expiry_thread(self) -> None:
        if self._expiry_thread is None:
            self._expiry_thread = threading.Thread(
                target=self._expiry_loop, name=f"memory-store-{self.name}-leases", daemon=True)
            self._expiry_thread.start()
        else:
            self._cond.notify_all()  # a new lease may be due before the one it waits for

    def _expiry_loop(self) -> None:
        """Sleep until the next lease deadline, expire, repeat; exits when no
        lease is left (the next grant starts a new thread)."""
        with self._cond:
            try:
                while self._leases:
                    self.expire_leases()
                    if self._leases:
                        next_deadline = min(lease.deadline for lease in self._leases.values())
                        self._cond.wait(max(0.0, next_deadline - self.clock()))
            finally:
                self._expiry_thread = None


class MemoryBackend(Backend):
    """A handle onto a :class:`MemoryStore`. Closing a handle ends its own
    watches and makes its calls raise ``Closed``; the store lives on."""

    def __init__(self, store: MemoryStore | None = None, clock: Callable[[], float] | None = None,
                 timeout: float = 5.0):
        if store is not None and clock is not None and clock is not store.clock:
            raise ValueError("the clock belongs to the store: pass it to MemoryStore(clock=...)")
        self.store = store if store is not None else MemoryStore(clock=clock)
        self.timeout = float(timeout)
        self.url = f"memory://{self.store.name}"
        self._closed = False
        self._streams: set[MemoryWatchStream] = set()

    @classmethod
    def named(cls, name: str, timeout: float = 5.0) -> MemoryBackend:
        """A new handle on the process-wide store ``name``."""
        return cls(MemoryStore.named(name), timeout=timeout)

    @contextmanager
    def _locked(self) -> Iterator[MemoryStore]:
        store = self.store
        with store._cond:
            if self._closed:
                raise Closed("memory backend: handle closed")
            store._check_failure()
            store.expire_leases()
            yield store

    # --- reads -----------------------------------------------------------------
    def get(self, key: str) -> KeyValue | None:
        result = self.range(key)
        return result.kvs[0] if result.kvs else None

    def range(self, start: str, end: str | None = None, *, revision: int = 0, limit: int = 0,
              keys_only: bool = False) -> RangeResult:
        key, end_key = range_keys(start, end)
        with self._locked() as store:
            if revision > store._revision:
                raise CoordError("mvcc: required revision is a future revision")
            if 0 < revision < store._compact_revision:
                raise Compacted(store._compact_revision)
            kvs = store._read(key, end_key, revision if revision > 0 else store._revision)
            current = store._revision
        count = len(kvs)
        if limit > 0:
            kvs = kvs[:limit]
        if keys_only:
            kvs = [KeyValue(kv.key, b"", kv.create_revision, kv.mod_revision, kv.version, kv.lease)
                   for kv in kvs]
        return RangeResult(kvs=tuple(kvs), revision=current, count=count)

    # --- writes ----------------------------------------------------------------
    def put(self, key: str, value: bytes | str, *, lease: int = 0) -> int:
        data = value.encode("utf-8") if isinstance(value, str) else value
        return self.txn((), (Put(key, data, lease),)).revision

    def delete(self, key: str, end: str | None = None) -> int:
        deleted: int = self.txn((), (Delete(key, end),)).responses[0]
        return deleted

    def txn(self, compares: Sequence[Compare], success: Sequence[Op] = (),
            failure: Sequence[Op] = ()) -> TxnResult:
        validate_txn(compares, success, failure)
        with self._locked() as store:
            succeeded = all(compare_holds(store._keys.live(encode_key(c.key)), c) for c in compares)
            ops = success if succeeded else failure
            for op in ops:
                if isinstance(op, Put) and op.lease and op.lease not in store._leases:
                    raise LeaseNotFound(f"lease {op.lease:x} not found")
            changes: list[Change] = []
            responses: list[int | tuple[KeyValue, ...]] = []
            for op in ops:
                if isinstance(op, Put):
                    responses.append(store._put(changes, op))
                elif isinstance(op, Delete):
                    responses.append(store._delete(changes, *range_keys(op.key, op.range_end)))
                else:  # reads see this txn's earlier writes, as in etcd
                    key, end_key = range_keys(op.key, op.range_end)
                    responses.append(tuple(store._read(key, end_key, store._revision + 1)))
            if changes:
                store._revision += 1
                store._commit(changes)
            return TxnResult(succeeded=succeeded, revision=store._revision, responses=tuple(responses))

    # --- leases ------------------------------------------------------------------
    def lease_grant(self, ttl: int) -> Lease:
        ttl = max(int(ttl), 1)
        if ttl > MAX_LEASE_TTL:
            raise CoordError("etcdserver: too large lease TTL")
        with self._locked() as store:
            lease = store._new_lease(ttl)
            return Lease(id=lease.id, ttl=lease.ttl)

    def lease_keepalive(self, lease_id: int, timeout: float | None = None) -> int:
        with self._locked() as store:
            lease = store._leases.get(lease_id)
            if lease is None:
                return 0
            lease.deadline = store.clock() + lease.ttl
            return lease.ttl

    def lease_revoke(self, lease_id: int) -> None:
        with self._locked() as store:
            lease = store._leases.get(lease_id)
            if lease is not None:
                store._revoke(lease)

    def lease_ttl(self, lease_id: int) -> int:
        with self._locked() as store:
            lease = store._leases.get(lease_id)
            if lease is None:
                return -1
            return int(lease.deadline - store.clock())  # etcd truncates the remaining seconds

    # --- watches -----------------------------------------------------------------
    def watch(self, key: str, end: str | None = None, *, start_revision: int = 0, prev_kv: bool = False,
              progress_notify: bool = False) -> WatchStream:
        start = encode_key(key) or b"\0"  # etcd watches an empty key as "\0"
        end_key = encode_end(end)
        with self._locked() as store:
            first = start_revision if start_revision > 0 else store._revision + 1
            stream = MemoryWatchStream(start, end_key, first, prev_kv=prev_kv,
                                       progress_notify=progress_notify, on_cancel=self._forget)
            if first < store._compact_revision:
                stream.fail(Compacted(store._compact_revision))
                return stream
            for revision, changes in store._log.since(first):
                # etcd reads prev_kv at revision-1, which may be compacted away
                stream.offer(revision, changes, store._revision,
                             drop_prev_kv=revision - 1 < store._compact_revision)
            store._watchers.add(stream)
            self._streams.add(stream)
            return stream

    def _forget(self, stream: MemoryWatchStream) -> None:
        with self.store._cond:
            self.store._watchers.discard(stream)
            self._streams.discard(stream)

    # --- maintenance -------------------------------------------------------------
    def revision(self) -> int:
        with self._locked() as store:
            return store._revision

    def compact(self, revision: int) -> None:
        with self._locked() as store:
            if revision <= store._compact_revision:
                raise Compacted(store._compact_revision)
            if revision > store._revision:
                raise CoordError("mvcc: required revision is a future revision")
            store._compact_revision = revision
            store._keys.compact(revision)
            store._log.compact(revision)

    def close(self) -> None:
        with self.store._cond:
            self._closed = True
            streams, self._streams = self._streams, set()
            self.store._watchers.difference_update(streams)
        for stream in streams:
            stream.finish()

    def __repr__(self) -> str:
        return f"<MemoryBackend {self.url}{' closed' if self._closed else ''}>"
