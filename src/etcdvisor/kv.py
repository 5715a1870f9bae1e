"""A small key/value facade with locks and watches (after hms-hmetcd's ``Kvi``).

>>> from etcdvisor import kv
>>> with kv.open("mem:") as store:        # or "http://127.0.0.1:2379"
...     store.store("greeting", "hello")
...     store.get("greeting")
'hello'

Values are ``str`` at this layer (UTF-8 in the store; a value that is not
valid UTF-8 raises ``UnicodeDecodeError`` -- use :meth:`KV.get_kv` for the
raw bytes). Errors are exceptions (:class:`~etcdvisor.coord.errors.CoordError`
subclasses), never ``(value, err)`` pairs.

Guarantees:

* ``test_and_set`` and ``transaction`` are single etcd transactions (atomic);
* ``temp_key`` keys and locks hang on one lease per handle (one
  :class:`~etcdvisor.coord.session.Session`, created on first use and kept
  alive in the background): they vanish when the handle is closed (at once)
  or its process dies (after ``session_ttl``). If the lease is lost while
  the process lives (a partition longer than the TTL), temp keys are
  re-created when the session gets a new lease;
* watches start at the store revision read when the call is made: every
  change after the call returns is seen, in order, across broken streams
  (resumed from the last revision seen). If history was compacted meanwhile,
  intermediate changes collapse into one.

Limits: a ``transaction``/``test_and_set`` comparing a missing key's value
never succeeds (etcd has no value for a missing key); pass ``expected=None``
to ``test_and_set`` to mean "only if missing". Every write counts as a
change for watches, even one that stores the same value.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable, Iterator

from .coord import Backend, Closed, Compacted, KeyValue, Unavailable, open_backend
from .coord.session import Session, SessionEvent, SessionEventKind
from .coord.types import COMPARE_OPS, Compare, EventType, Put, missing
from .recipes.lock import Lock, LockTimeout

log = logging.getLogger(__name__)

DEFAULT_SESSION_TTL = 15
DEFAULT_LOCK_PREFIX = "/etcdvisor/locks"

__all__ = ["KV", "HeldLock", "KeyChange", "LockTimeout", "WatchHandle", "open"]


class KeyChange(enum.Flag):
    """What happened to a watched key (combine with ``|`` to select)."""

    PUT = 1
    DELETE = 2
    ANY = PUT | DELETE


def open(url, **options) -> KV:  # noqa: A001 -- the facade's name for it
    """Open a handle: ``mem:``/``memory://NAME`` (in-process) or an etcd URL.

    Options: ``session_ttl`` (seconds, default 15), ``lock_prefix`` (default
    ``/etcdvisor/locks``); the rest go to
    :func:`etcdvisor.coord.open_backend` (``timeout``, ``tls``,
    ``username``, ``password_file``, ``password_env``...)."""
    session_ttl = options.pop("session_ttl", DEFAULT_SESSION_TTL)
    lock_prefix = options.pop("lock_prefix", DEFAULT_LOCK_PREFIX)
    backend = open_backend(url, **options)
    return KV(backend, session_ttl=session_ttl, lock_prefix=lock_prefix, owns_backend=True)


class HeldLock:
    """A lock taken by :meth:`KV.lock`: release it with :meth:`release` or
    use it as a context manager (entering does not acquire again)."""

    def __init__(self, lock: Lock):
        self.lock = lock
        self.token = lock.token  # fencing token: create revision of the lock key

    def is_held(self) -> bool:
        return self.lock.is_held()

    def release(self) -> None:
        self.lock.release()

    def __enter__(self) -> HeldLock:
        return self

    def __exit__(self, *exc) -> None:
        if self.lock.token is not None:
            self.lock.release()


class WatchHandle:
    """A running :meth:`KV.watch_callback`; :meth:`cancel` stops it."""

    def __init__(self, follower: _KeyFollower, thread: threading.Thread):
        self._follower = follower
        self._thread = thread

    @property
    def active(self) -> bool:
        return self._thread.is_alive()

    def cancel(self, timeout: float = 5.0) -> None:
        """Stop the watcher; safe from the callback itself and to call twice."""
        self._follower.stop()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the watcher stopped by itself; True if it did."""
        self._thread.join(timeout)
        return not self._thread.is_alive()


class KV:
    """A key/value handle (see module docstring). Thread-safe."""

    def __init__(self, backend: Backend, *, session_ttl: int = DEFAULT_SESSION_TTL,
                 lock_prefix: str = DEFAULT_LOCK_PREFIX, owns_backend: bool = False):
        self.backend = backend
        self.session_ttl = int(session_ttl)
        self.lock_prefix = lock_prefix.rstrip("/")
        self._owns_backend = owns_backend
        self._session: Session | None = None
        self._temp_keys: dict[str, str] = {}
        self._watches: set[WatchHandle] = set()
        self._state_lock = threading.Lock()
        self._closed = False

    # --- open/close ------------------------------------------------------------
    def close(self) -> None:
        """Stop watchers, revoke the lease (temp keys and locks go at once)
        and close the backend if this handle opened it. Safe to call twice."""
        with self._state_lock:
            if self._closed:
                return
            self._closed = True
            watches, self._watches = list(self._watches), set()
            session, self._session = self._session, None
        for handle in watches:
            handle.cancel()
        if session is not None:
            session.close(revoke=True)
        if self._owns_backend:
            self.backend.close()

    def __enter__(self) -> KV:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- get/store/delete --------------------------------------------------------
    def get(self, key: str, default: str | None = None) -> str | None:
        """The key's value, or ``default`` when it does not exist."""
        kv = self.backend.get(key)
        return default if kv is None else kv.value.decode("utf-8")

    def exists(self, key: str) -> bool:
        return self.backend.get(key) is not None

    def get_kv(self, key: str) -> KeyValue | None:
        """The raw entry (bytes value, revisions, lease), or None."""
        return self.backend.get(key)

    def get_range(self, start: str, end: str) -> list[tuple[str, str]]:
        """``(key, value)`` pairs with ``start <= key < end``, sorted by key
        (``end`` is exclusive, as in etcd)."""
        return [(kv.key, kv.value.decode("utf-8")) for kv in self.backend.range(start, end).kvs]

    def get_prefix(self, prefix: str) -> list[tuple[str, str]]:
        """``(key, value)`` pairs of every key starting with ``prefix``."""
        return [(kv.key, kv.value.decode("utf-8")) for kv in self.backend.get_prefix(prefix).kvs]

    def store(self, key: str, value: str) -> None:
        self.backend.put(key, _encode(value))

    def delete(self, key: str) -> bool:
        """Delete the key; True if it existed (a missing key is not an error)."""
        with self._state_lock:
            self._temp_keys.pop(key, None)
        return self.backend.delete(key) > 0

    def temp_key(self, key: str, value: str | None = None) -> None:
        """Store a key that lives as long as this handle (its lease). The
        default value is the lease id in hex (who owns it)."""
        session = self._lease_session()
        text = f"{session.lease_id:x}" if value is None else value
        with self._state_lock:
            self._temp_keys[key] = value
        self.backend.put(key, _encode(text), lease=session.lease_id)

    # --- test-and-set ---------------------------------------------------------------
    def test_and_set(self, key: str, expected: str | None, new: str) -> bool:
        """Atomically: if the key's value == ``expected`` (``None``: the key
        is missing), set it to ``new``. True if the set happened."""
        compare = missing(key) if expected is None else Compare(key, "value", "=", _encode(expected))
        return self.backend.txn([compare], [Put(key, _encode(new))]).succeeded

    def transaction(self, key: str, op: str, value: str, then_key: str | None, then_value: str,
                    else_key: str | None, else_value: str) -> bool:
        """Atomically: ``if value_of(key) <op> value: then_key = then_value
        else: else_key = else_value``. ``op`` is ``=``, ``!=``, ``<`` or
        ``>`` (byte-wise, case-sensitive). A ``None`` key skips that branch's
        write. Returns whether the condition held; a missing ``key`` never
        satisfies it."""
        if op not in COMPARE_OPS:
            raise ValueError(f"transaction op must be one of {', '.join(COMPARE_OPS)}, not {op!r}")
        success = [Put(then_key, _encode(then_value))] if then_key else []
        failure = [Put(else_key, _encode(else_value))] if else_key else []
        return self.backend.txn([Compare(key, "value", op, _encode(value))], success, failure).succeeded

    # --- locks ------------------------------------------------------------------------
    def lock(self, name: str = "default", timeout: float | None = None) -> HeldLock:
        """Take the distributed lock ``name`` (blocking; at most ``timeout``
        seconds, else :class:`LockTimeout`). Use the result as a context
        manager or call ``release()``. Threads sharing this handle are
        serialized too (the lock is not re-entrant)."""
        lock = self._new_lock(name)
        if not lock.acquire(timeout=timeout):
            raise LockTimeout(f"lock {name!r} not acquired within {timeout:g}s")
        return HeldLock(lock)

    def try_lock(self, name: str = "default") -> HeldLock | None:
        """Take the lock if it is free right now, else None."""
        lock = self._new_lock(name)
        return HeldLock(lock) if lock.acquire(blocking=False) else None

    def _new_lock(self, name: str) -> Lock:
        if not name or "/" in name:
            raise ValueError(f"lock name must be non-empty and without '/': {name!r}")
        return Lock(self.backend, f"{self.lock_prefix}/{name}", session=self._lease_session())

    # --- watches -----------------------------------------------------------------------
    def watch(self, key: str, timeout: float | None = None) -> tuple[str | None, KeyChange] | None:
        """Block until ``key`` is written or deleted; return ``(new_value,
        KeyChange.PUT)`` or ``(None, KeyChange.DELETE)``. Returns None (not a
        tuple) when ``timeout`` seconds pass first."""
        follower = _KeyFollower(self.backend, key)
        timer = None
        if timeout is not None:
            timer = threading.Timer(timeout, follower.stop)
            timer.daemon = True
            timer.start()
        try:
            for change, kv in follower.changes():
                return _decode(kv), change
            return None
        finally:
            if timer is not None:
                timer.cancel()
            follower.stop()

    def watch_callback(self, key: str, callback: Callable[[str, str | None, KeyChange], object],
                       op: KeyChange = KeyChange.ANY) -> WatchHandle:
        """Call ``callback(key, new_value_or_None, change)`` on a background
        thread for every change of ``key`` selected by ``op``. The watcher
        stops when the callback returns ``False`` (exactly; None keeps it
        going), when the key is deleted (after reporting the delete if
        selected), or on :meth:`WatchHandle.cancel`."""
        follower = _KeyFollower(self.backend, key)

        def run() -> None:
            try:
                for change, kv in follower.changes():
                    if change & op and _call_safely(callback, key, _decode(kv), change) is False:
                        return
                    if change is KeyChange.DELETE:
                        return
            except Closed:
                return
            finally:
                follower.stop()
                with self._state_lock:
                    self._watches.discard(handle)

        thread = threading.Thread(target=run, name=f"kv-watch:{key}", daemon=True)
        handle = WatchHandle(follower, thread)
        with self._state_lock:
            if self._closed:
                raise Closed("kv handle closed")
            self._watches.add(handle)
        thread.start()
        return handle

    # --- the lease -----------------------------------------------------------------
    def _lease_session(self) -> Session:
        with self._state_lock:
            if self._closed:
                raise Closed("kv handle closed")
            if self._session is None:
                session = Session(self.backend, self.session_ttl, name="kv")
                session.add_listener(self._on_session_event)
                self._session = session.start()
            return self._session

    def _on_session_event(self, event: SessionEvent) -> None:
        """Re-create temp keys on a replacement lease (keepalive thread: a
        few quick puts)."""
        if event.kind is not SessionEventKind.NEW_LEASE:
            return
        with self._state_lock:
            temp = dict(self._temp_keys)
        for key, value in temp.items():
            text = f"{event.lease_id:x}" if value is None else value
            try:
                self.backend.put(key, _encode(text), lease=event.lease_id)
            except Exception as exc:  # the next NEW_LEASE retries
                log.warning("kv: could not re-create temp key %s: %s", key, exc)


class _KeyFollower:
    """Every change of one key after the initial read, in order; resumes a
    broken stream from the last revision seen, re-reads after compaction."""

    def __init__(self, backend: Backend, key: str, retry_interval: float = 0.2):
        self.backend = backend
        self.key = key
        self.retry_interval = retry_interval
        result = backend.range(key)
        self.current: KeyValue | None = result.kvs[0] if result.kvs else None
        self.revision = result.revision
        self._stopped = threading.Event()
        self._stream = None
        self._lock = threading.Lock()

    def stop(self) -> None:
        self._stopped.set()
        with self._lock:
            stream = self._stream
        if stream is not None:
            stream.cancel()

    def changes(self) -> Iterator[tuple[KeyChange, KeyValue | None]]:
        """Yield ``(change, kv_or_None)`` until :meth:`stop`. Raises Closed
        when the backend is closed."""
        while not self._stopped.is_set():
            try:
                yield from self._follow()
            except Compacted:
                change = self._resync()
                if change is not None:
                    yield change
            except Unavailable as exc:
                log.debug("kv watch %s interrupted (%s), resuming", self.key, exc)
                self._stopped.wait(self.retry_interval)

    def _follow(self) -> Iterator[tuple[KeyChange, KeyValue | None]]:
        stream = self.backend.watch(self.key, start_revision=self.revision + 1)
        with self._lock:
            self._stream = stream
        if self._stopped.is_set():
            stream.cancel()
        try:
            for batch in stream:
                for event in batch.events:
                    if self._stopped.is_set():
                        return
                    self.revision = event.kv.mod_revision
                    if event.type is EventType.PUT:
                        self.current = event.kv
                        yield KeyChange.PUT, event.kv
                    else:
                        self.current = None
                        yield KeyChange.DELETE, None
        finally:
            with self._lock:
                self._stream = None
            stream.cancel()

    def _resync(self) -> tuple[KeyChange, KeyValue | None] | None:
        result = self.backend.range(self.key)
        fresh = result.kvs[0] if result.kvs else None
        before, self.current, self.revision = self.current, fresh, result.revision
        if fresh is None:
            return (KeyChange.DELETE, None) if before is not None else None
        if before is None or fresh.mod_revision != before.mod_revision:
            return KeyChange.PUT, fresh
        return None


def _call_safely(callback, *args):
    try:
        return callback(*args)
    except Exception:  # a broken callback must not kill the watcher
        log.exception("kv watch callback failed")
        return None


def _encode(value: str) -> bytes:
    if not isinstance(value, str):
        raise TypeError(f"values are str at this layer, got {type(value).__name__}")
    return value.encode("utf-8")


def _decode(kv: KeyValue | None) -> str | None:
    return None if kv is None else kv.value.decode("utf-8")
