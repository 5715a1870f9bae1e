"""Named distributed locks: the etcd v3 lock recipe (``concurrency.Mutex``),
with an optional maximum hold time (after hms-hmetcd's timed lock).

Key layout: one key per contender, ``<name_prefix>/<lease-id-hex>``, empty
value, attached to the contender's session lease. Waiting is the shared
queue-wait protocol of :mod:`.queue_wait` (enqueue on the lease, wait for
the predecessor's deletion; one release wakes one waiter); release deletes
our key if it still has our create revision.

States of a :class:`Lock` (:class:`LockState`)::

    UNLOCKED -> WAITING             acquire() enqueued our key
    WAITING  -> HELD                our key is the head of the line
    WAITING  -> UNLOCKED            timeout / try-lock failed (key deleted), or
                                    our key vanished (LockLost raised)
    HELD     -> LOST                the store released the lock: max hold time
                                    up, lease expired or revoked, key deleted
    HELD     -> UNLOCKED            release()
    LOST     -> UNLOCKED            release() (raises LockLost: you overran)

Maximum hold time (``max_hold`` seconds, whole seconds, rounded up): when
the lock is acquired, its key moves (same create revision, so same place and
same token) onto a fresh lease of that TTL that nobody keeps alive; the
**store** deletes the key when the time is up, whatever the holder does
(paused, partitioned, hung), and the next waiter acquires at once. The
holder learns it lost the lock: :attr:`Lock.lost` becomes True,
``on_lost(reason)`` is called once (from a watcher thread), :attr:`Lock.token`
becomes None, and :meth:`Lock.release` raises :class:`LockLost`. The holder
considers the lock lost at ``t_grant_sent + granted_ttl`` on its own clock,
which is never later than the store's expiry (the server starts the TTL
after our request was sent). A holder that crashes holds the lock at most
``max_hold`` (not the session TTL) -- choose ``max_hold`` accordingly.

Guarantees:

* mutual exclusion among contenders whose keys are alive;
* ``token`` (the key's create revision) strictly increases from one holder
  to the next; a fenced write (``create_revision(key) == token``) fails once
  the lock was lost;
* waiters get the lock in the order they enqueued (create revision order);
* a holder that dies frees the lock when its lease expires (at most the TTL
  after its last keepalive, or ``max_hold``); a clean release frees it at
  once, and the next waiter reacts within one watch round trip.

Errors, deliberately not copied from hms-hmetcd: a second acquire by the
thread that holds the lock (directly, or through another :class:`Lock` on the
same session and name) raises :class:`LockReentry` instead of deadlocking or
"acquiring" twice; a release of a lock that is not held raises
:class:`LockNotHeld` (a ``RuntimeError``), never passes silently.

Contenders in one process that share a :class:`Session` would share one key
(the etcd recipe keys contenders by lease), so they are additionally
serialized by a process-local guard per (session, prefix). A :class:`Lock`
instance may be shared between threads like ``threading.Lock``.

Limits: without ``max_hold`` or ``on_lost``, no watcher runs while holding:
a lost lease is noticed by :meth:`Lock.is_held` or :meth:`Lock.release`.
etcd grants at least its minimum TTL (about 2 s) and extends every lease
when a new etcd leader is elected, so a hold can last longer than
``max_hold`` after an etcd leader change (never shorter). A lock without a
given session starts its own session for each acquisition.
"""

from __future__ import annotations

import enum
import logging
import math
import threading
import time
import weakref
from collections.abc import Callable

from ..coord.base import Backend
from ..coord.errors import CoordError
from ..coord.follow import Follower
from ..coord.session import Session
from ..coord.types import EventType, KeyValue, Put, WatchBatch, create_revision
from .queue_wait import EntryLost, QueueEntry, WaitOutcome, WaitQueue

log = logging.getLogger(__name__)

DEFAULT_TTL = 30


class LockError(CoordError):
    """Base class of lock errors."""


class LockTimeout(LockError, TimeoutError):
    """The lock was not acquired within the timeout (its waiter key is gone)."""


class LockLost(LockError, EntryLost):
    """Our key vanished: while waiting (lease expired or revoked), or while
    holding (max hold time up, lease lost, key deleted)."""


class LockReentry(LockError, RuntimeError):
    """The thread holding the lock tried to take it again (not re-entrant)."""


class LockNotHeld(LockError, RuntimeError):
    """release() of a lock that is not held (a double unlock)."""


class LockState(enum.Enum):
    UNLOCKED = "unlocked"
    WAITING = "waiting"
    HELD = "held"
    LOST = "lost"


class _Guard:
    """A process-local mutex that knows its owner thread (to refuse re-entry)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.owner: int | None = None

    def acquire(self, blocking: bool, timeout: float) -> bool:
        if self.owner == threading.get_ident():
            raise LockReentry("this thread already holds the lock (locks are not re-entrant)")
        if not self._lock.acquire(blocking, timeout):
            return False
        self.owner = threading.get_ident()
        return True

    def release(self) -> None:
        self.owner = None
        self._lock.release()


# Process-local guards of contenders sharing one session: {session: {prefix: guard}}.
_shared_guards: weakref.WeakKeyDictionary[Session, dict[str, _Guard]] = weakref.WeakKeyDictionary()
_shared_guards_lock = threading.Lock()


def _guard_for(session: Session, prefix: str) -> _Guard:
    with _shared_guards_lock:
        per_session = _shared_guards.setdefault(session, {})
        return per_session.setdefault(prefix, _Guard())


class _Hold:
    """One acquisition: our queue entry, the hold lease and the loss watcher."""

    def __init__(self, entry: QueueEntry, session: Session):
        self.entry = entry
        self.session = session
        self.hold_lease = 0
        self.expires_at: float | None = None  # local monotonic deadline of max_hold
        self.follower: Follower | None = None
        self.timer: threading.Timer | None = None

    def stop_watching(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if self.follower is not None:
            self.follower.stop()


class Lock:
    """A distributed lock named by ``name_prefix`` (see module docstring).

    ``session``: a started :class:`Session` whose lease the waiter key hangs
    on; without one, each acquisition starts its own session of ``ttl``
    seconds and revokes it on release. ``max_hold``: seconds after which the
    store releases the lock by itself (None: no limit). ``on_lost(reason)``:
    called once when a hold is lost.
    """

    def __init__(self, backend: Backend, name_prefix: str, session: Session | None = None,
                 ttl: int = DEFAULT_TTL, *, retry_interval: float = 0.2,
                 max_hold: float | None = None, on_lost: Callable[[str], None] | None = None):
        if not name_prefix.strip("/"):
            raise ValueError("lock name prefix must not be empty")
        if session is None and int(ttl) < 2:
            raise ValueError("lock ttl must be at least 2 seconds")
        if max_hold is not None and (isinstance(max_hold, bool) or not isinstance(max_hold, (int, float))
                                     or not 0 < max_hold < 2**31):
            raise ValueError(f"max_hold must be a positive number of seconds, not {max_hold!r}")
        self.backend = backend
        self.prefix = name_prefix.rstrip("/") + "/"
        self.ttl = int(ttl)
        self.max_hold = None if max_hold is None else max(1, math.ceil(max_hold))
        self.on_lost = on_lost
        self.queue = WaitQueue(backend, self.prefix, name=f"lock:{self.prefix}",
                               retry_interval=retry_interval)
        self._given_session = session
        self._guard = _guard_for(session, self.prefix) if session is not None else _Guard()
        self._state_lock = threading.Lock()  # guards state/hold against the loss watcher
        self.state = LockState.UNLOCKED
        self._hold: _Hold | None = None
        self._lost = threading.Event()
        self.lost_reason = ""

    # --- public --------------------------------------------------------------
    @property
    def token(self) -> int | None:
        """Fencing token of the current hold (the lock key's create
        revision), or None when this lock is not held (or was lost)."""
        hold = self._hold
        return hold.entry.token if hold is not None and self.state is LockState.HELD else None

    @property
    def key(self) -> str | None:
        hold = self._hold
        return hold.entry.key if hold is not None and self.state is LockState.HELD else None

    @property
    def lost(self) -> bool:
        """True once the store released our hold (until the next acquire)."""
        return bool(self.lost_reason)

    @property
    def expires_at(self) -> float | None:
        """``time.monotonic()`` value at which a max-hold lock counts as lost."""
        hold = self._hold
        return hold.expires_at if hold is not None else None

    def wait_lost(self, timeout: float | None = None) -> bool:
        """Block until the hold is lost and ``on_lost`` has run; True if so."""
        return self._lost.wait(timeout)

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        """Take the lock; True when held. ``blocking=False`` tries once.
        ``timeout`` (seconds, None or -1 = forever) bounds a blocking wait;
        on timeout the waiter key is deleted and False is returned.

        Raises :class:`LockReentry` when this thread holds it already,
        :class:`LockLost` if our waiter key vanished, and CoordError when
        the store cannot be reached to enqueue."""
        if not blocking and timeout not in (None, -1):
            raise ValueError("can't specify a timeout for a non-blocking call")
        if timeout is not None and timeout < 0:
            timeout = None
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._guard.acquire(blocking, -1 if timeout is None else timeout):
            return False
        try:
            acquired = self._contend(blocking, deadline)
        except BaseException:
            self._guard.release()
            raise
        if not acquired:
            self._guard.release()
        return acquired

    def release(self) -> None:
        """Delete our key (if it is still ours). Raises :class:`LockNotHeld`
        when not held; :class:`LockLost` (after cleaning up) when the store
        had already released the hold; a CoordError from the store is
        raised after the local state was reset (the key then goes with the
        lease)."""
        with self._state_lock:
            if self.state not in (LockState.HELD, LockState.LOST):
                raise LockNotHeld(f"release of an unheld lock {self.prefix} (state {self.state.value})")
            hold, was_lost = self._hold, self.state is LockState.LOST
            assert hold is not None  # HELD and LOST always have a hold
            self.state = LockState.UNLOCKED
        try:
            still_ours = self._withdraw(hold)
        finally:
            self._guard.release()
        if was_lost or not still_ours:
            reason = self.lost_reason or "our key was gone"
            raise LockLost(f"lock {self.prefix}: released by the store before release() ({reason})")

    def is_held(self) -> bool:
        """True when we hold the lock and our key still exists in the store
        (a read: it may be stale by the time you use it; prefer the token).
        Finding the key gone moves the lock to LOST."""
        hold = self._hold
        if hold is None or self.state is not LockState.HELD:
            return False
        if self.queue.still_ours(hold.entry):
            return True
        self._mark_lost(hold, "lock key gone (lease expired or revoked)")
        return False

    def holder(self) -> KeyValue | None:
        """The current holder's key (lowest create revision), or None."""
        return self.queue.head()

    def __enter__(self) -> Lock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"<Lock {self.prefix} {self.state.value} token={self.token}>"

    # --- protocol --------------------------------------------------------------
    def _contend(self, blocking: bool, deadline: float | None) -> bool:
        """Enqueue and wait for our turn (guard held). On failure or timeout
        the waiter key is withdrawn."""
        session = self._given_session or Session(self.backend, self.ttl, name=f"lock:{self.prefix}").start()
        self._lost.clear()
        self.lost_reason = ""
        hold = None
        try:
            try:
                hold = _Hold(self.queue.enqueue(session.lease_id), session)
                self._hold, self.state = hold, LockState.WAITING
                outcome = self.queue.wait_turn(hold.entry, deadline=deadline, blocking=blocking)
            except EntryLost as exc:
                raise LockLost(str(exc)) from None
            if outcome is WaitOutcome.HEAD:
                self._take(hold)
                return True
        except BaseException:
            self._abandon(hold, session)
            raise
        self._abandon(hold, session)
        return False

    def _take(self, hold: _Hold) -> None:
        """We are the head: move to the hold lease if any, start the loss
        watcher if anyone listens, and become HELD."""
        revision = 0
        if self.max_hold is not None:
            sent = time.monotonic()
            lease = self.backend.lease_grant(self.max_hold)
            hold.hold_lease = lease.id
            entry = hold.entry
            result = self.backend.txn([create_revision(entry.key, "=", entry.token)],
                                      [Put(entry.key, b"", lease.id)])
            if not result.succeeded:
                raise LockLost(f"lock {self.prefix}: our key {entry.key} vanished as we acquired it")
            hold.expires_at = sent + lease.ttl
            revision = result.revision
        with self._state_lock:
            self.state = LockState.HELD
        if self.max_hold is not None or self.on_lost is not None:
            self._watch_hold(hold, revision)

    def _watch_hold(self, hold: _Hold, revision: int) -> None:
        """Follow our key from ``revision + 1`` (the never-miss loop; 0:
        read it first): a delete, or the local max-hold deadline, means the
        hold is lost."""
        key = hold.entry.key

        def resync() -> int:  # after compaction: is the key still ours?
            result = self.backend.range(key)
            if not any(kv.create_revision == hold.entry.token for kv in result.kvs):
                self._mark_lost(hold, "lock key gone (lease expired or revoked)")
            return result.revision

        def on_batch(batch: WatchBatch) -> bool:
            if any(ev.type is EventType.DELETE for ev in batch.events):
                self._mark_lost(hold, self._expiry_reason(hold))
                return True
            return False

        hold.follower = Follower(self.backend, key, None, resync=resync, on_batch=on_batch,
                                 start_revision=revision + 1 if revision else 0, name=f"lock-hold:{key}").start()
        if hold.expires_at is not None:
            hold.timer = threading.Timer(max(0.0, hold.expires_at - time.monotonic()),
                                         self._mark_lost, (hold, f"max hold time of {self.max_hold}s is up"))
            hold.timer.daemon = True
            hold.timer.start()

    def _expiry_reason(self, hold: _Hold) -> str:
        if hold.expires_at is not None and time.monotonic() >= hold.expires_at - 1.0:
            return f"max hold time of {self.max_hold}s is up"
        return "lock key deleted (lease expired or revoked)"

    def _mark_lost(self, hold: _Hold, reason: str) -> None:
        """HELD -> LOST once per hold; tells ``on_lost``."""
        with self._state_lock:
            if self._hold is not hold or self.state is not LockState.HELD:
                return
            self.state = LockState.LOST
            self.lost_reason = reason
        log.warning("lock %s: lost (%s)", self.prefix, reason)
        hold.stop_watching()
        try:
            if self.on_lost is not None:
                self.on_lost(reason)
        except Exception:  # a broken callback must not kill the watcher
            log.exception("lock %s: on_lost callback failed", self.prefix)
        finally:
            self._lost.set()  # after the callback: wait_lost() returns once it ran

    def _abandon(self, hold: _Hold | None, session: Session) -> None:
        """Leave the line after a failed or timed-out wait (quietly)."""
        with self._state_lock:
            self.state = LockState.UNLOCKED
        try:
            if hold is not None:
                self._withdraw(hold)
            elif session is not self._given_session:
                session.close(revoke=True)
        except CoordError as exc:
            log.warning("lock %s: could not delete waiter key: %s", self.prefix, exc)

    def _withdraw(self, hold: _Hold) -> bool:
        """Delete our key if it is still ours, revoke the hold lease and an
        own session. True if our key was still there."""
        hold.stop_watching()
        try:
            return self.queue.withdraw(hold.entry)
        finally:
            if hold.hold_lease:
                self.backend.lease_revoke(hold.hold_lease)
            if hold.session is not self._given_session:
                hold.session.close(revoke=True)
