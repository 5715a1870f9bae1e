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
* watches wake only when the value **changes**, the key is **created** or
  it is **deleted** (as hms-hmetcd's ``Watch``): rewriting the value the key
  already has is not a change. ``every_write=True`` restores "every put
  counts". Watches start at the store revision read when the call is made:
  every change after the call returns is seen, in order, across broken
  streams (resumed from the last revision seen) -- the loop is
  :class:`~etcdvisor.coord.follow.Follower`, the package's one never-miss
  watch loop. If history was compacted meanwhile, the last known value and
  the re-read one are compared and their difference is one change;
* locks are :class:`~etcdvisor.recipes.lock.Lock` on the handle's lease,
  with an optional maximum hold time after which the store releases them.
  Re-entrant locking (``LockReentry``) and a double unlock (``LockNotHeld``)
  are errors, unlike hms-hmetcd where both pass silently.

Limits: a ``transaction``/``test_and_set`` comparing a missing key's value
never succeeds (etcd has no value for a missing key); pass ``expected=None``
to ``test_and_set`` to mean "only if missing". A change that is undone
before the watcher sees it (``a -> b -> a`` within one compacted gap) is not
seen.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from .coord import Backend, Closed, KeyValue, open_backend
from .coord.session import Session, SessionEvent, SessionEventKind
from .coord.types import COMPARE_OPS, Compare, Put, missing
from .kv_watch import KeyChange, KeyFollower, WatchHandle
from .recipes.lock import (
    Lock,
    LockLost,
    LockNotHeld,
    LockReentry,
    LockState,
    LockTimeout,
)

log = logging.getLogger(__name__)

DEFAULT_SESSION_TTL = 15
DEFAULT_LOCK_PREFIX = "/etcdvisor/locks"

__all__ = ["KV", "HeldLock", "KeyChange", "LockLost", "LockNotHeld", "LockReentry", "LockTimeout",
           "WatchHandle", "open"]


def open(url: str, **options: Any) -> KV:  # noqa: A001 -- the facade's name for it
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
    use it as a context manager (entering does not acquire again).

    With a maximum hold time, the store releases the lock by itself when the
    time is up: :attr:`lost` turns True, ``on_lost`` is called, :attr:`token`
    no longer fences anything, and :meth:`release` raises ``LockLost``."""

    def __init__(self, lock: Lock):
        self.lock = lock
        self.token = lock.token  # fencing token: create revision of the lock key

    @property
    def lost(self) -> bool:
        """True once the store released the lock under us."""
        return self.lock.lost

    @property
    def expires_at(self) -> float | None:
        """``time.monotonic()`` deadline of a max-hold lock (None: no limit)."""
        return self.lock.expires_at

    def is_held(self) -> bool:
        return self.lock.is_held()

    def release(self) -> None:
        """Release; ``LockNotHeld`` on a second release, ``LockLost`` when
        the store had already released it (max hold time, lease loss)."""
        self.lock.release()

    def __enter__(self) -> HeldLock:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.lock.state in (LockState.HELD, LockState.LOST):
            self.lock.release()


class KV:
    """A key/value handle (see module docstring). Thread-safe."""

    def __init__(self, backend: Backend, *, session_ttl: int = DEFAULT_SESSION_TTL,
                 lock_prefix: str = DEFAULT_LOCK_PREFIX, owns_backend: bool = False):
        self.backend = backend
        self.session_ttl = int(session_ttl)
        self.lock_prefix = lock_prefix.rstrip("/")
        self._owns_backend = owns_backend
        self._session: Session | None = None
        self._temp_keys: dict[str, str | None] = {}
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

    def __exit__(self, *exc: object) -> None:
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
    def lock(self, name: str = "default", timeout: float | None = None, *,
             max_hold: float | None = None, on_lost: Callable[[str], None] | None = None) -> HeldLock:
        """Take the distributed lock ``name`` (blocking; at most ``timeout``
        seconds, else :class:`LockTimeout`). Use the result as a context
        manager or call ``release()``. Threads sharing this handle are
        serialized too; the lock is not re-entrant (a second ``lock`` of the
        same name by the holding thread raises ``LockReentry``).

        ``max_hold`` (seconds, whole, rounded up): the store releases the
        lock when the time is up, even if this process hangs; the holder
        learns it (``HeldLock.lost``, ``on_lost(reason)`` called once from a
        watcher thread, ``release()`` raising ``LockLost``)."""
        lock = self._new_lock(name, max_hold, on_lost)
        if not lock.acquire(timeout=timeout):
            raise LockTimeout(f"lock {name!r} not acquired within {timeout:g}s")
        return HeldLock(lock)

    def try_lock(self, name: str = "default", *, max_hold: float | None = None,
                 on_lost: Callable[[str], None] | None = None) -> HeldLock | None:
        """Take the lock if it is free right now, else None."""
        lock = self._new_lock(name, max_hold, on_lost)
        return HeldLock(lock) if lock.acquire(blocking=False) else None

    def _new_lock(self, name: str, max_hold: float | None, on_lost: Callable[[str], None] | None) -> Lock:
        if not name or "/" in name:
            raise ValueError(f"lock name must be non-empty and without '/': {name!r}")
        return Lock(self.backend, f"{self.lock_prefix}/{name}", session=self._lease_session(),
                    max_hold=max_hold, on_lost=on_lost)

    # --- watches -----------------------------------------------------------------------
    def watch(self, key: str, timeout: float | None = None, *,
              every_write: bool = False) -> tuple[str | None, KeyChange] | None:
        """Block until ``key`` changes value, is created or is deleted;
        return ``(new_value, KeyChange.PUT)`` or ``(None, KeyChange.DELETE)``.
        Rewriting the value the key already has is not a change, unless
        ``every_write=True`` (then every put counts). Returns None (not a
        tuple) when ``timeout`` seconds pass first. Raises ``Closed`` when
        the backend is closed meanwhile."""
        found: queue.Queue[tuple[KeyChange, KeyValue | None]] = queue.Queue()
        def deliver(change: KeyChange, kv: KeyValue | None) -> bool:
            found.put((change, kv))
            return True  # the first change ends this watch

        follower = KeyFollower(self.backend, key, deliver, every_write=every_write).start()
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                remaining = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
                if remaining <= 0:
                    return None
                try:
                    change, kv = found.get(timeout=remaining)
                    return _decode(kv), change
                except queue.Empty:
                    if not follower.running():  # its loop ended: the backend was closed
                        raise Closed("kv watch: backend closed") from None
        finally:
            follower.stop()

    def watch_callback(self, key: str, callback: Callable[[str, str | None, KeyChange], object],
                       op: KeyChange = KeyChange.ANY, *, every_write: bool = False) -> WatchHandle:
        """Call ``callback(key, new_value_or_None, change)`` on a background
        thread for every change of ``key`` selected by ``op``: a new value,
        a creation or a deletion (with ``every_write=True``, every put). The
        watcher stops when the callback returns ``False`` (exactly; None
        keeps it going), when the key is deleted (after reporting the delete
        if selected), or on :meth:`WatchHandle.cancel`."""
        def deliver(change: KeyChange, kv: KeyValue | None) -> bool:
            if change & op and _call_safely(callback, key, _decode(kv), change) is False:
                return True
            return change is KeyChange.DELETE

        def forget() -> None:
            with self._state_lock:
                self._watches.discard(handle)

        follower = KeyFollower(self.backend, key, deliver, every_write=every_write, on_stop=forget)
        handle = WatchHandle(follower)
        with self._state_lock:
            if self._closed:
                raise Closed("kv handle closed")
            self._watches.add(handle)
        follower.start()
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


def _call_safely(callback: Callable[..., Any], *args: Any) -> Any:
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
