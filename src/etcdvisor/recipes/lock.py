"""Named distributed locks: the etcd v3 lock recipe (``concurrency.Mutex``).

Key layout: one key per contender, ``<name_prefix>/<lease-id-hex>``, empty
value, attached to the contender's session lease.

Protocol::

    enqueue   txn: if the key is missing, put it on our lease; read it back.
              Our create revision is our place in line (and, once we hold the
              lock, our fencing token).
    wait      read the prefix; the holder is the key with the lowest create
              revision. If that is not us, watch only our *predecessor* (the
              key with the greatest create revision below ours) from the read
              revision + 1 until it is deleted, then read again. One release
              wakes one waiter: no thundering herd, and no polling.
    release   delete our key if it still has our create revision.

States of a :class:`Lock`: UNLOCKED -> WAITING -> HELD -> UNLOCKED; WAITING
-> UNLOCKED on timeout (the waiter key is deleted), or when the waiter's
key vanished (:class:`LockLost`).

Guarantees:

* mutual exclusion among contenders whose keys are alive: at most one key is
  the lowest, and a newer key can never sort below an older one;
* ``token`` (the key's create revision) strictly increases from one holder
  to the next: every hold creates a new key at a newer store revision;
* waiters get the lock in the order they enqueued (create revision order);
* a holder that dies frees the lock when its lease expires (at most the TTL
  after its last keepalive); a clean release or a lease revoke frees it at
  once, and the next waiter reacts within one watch round trip.

Contenders in one process that share a :class:`Session` would share one key
(the etcd recipe keys contenders by lease), so they are additionally
serialized by a process-local guard per (session, prefix); a :class:`Lock`
instance may be shared between threads like ``threading.Lock`` (not
re-entrant: a second acquire from the holder blocks).

Limits: a lock is a lease, not an oracle. A holder paused or partitioned
longer than the TTL loses the lock without noticing until it checks
:meth:`Lock.is_held`; protect the shared resource with the fencing
``token``. A lock without a given session starts its own session for each
acquisition and revokes it on release.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref

from ..coord.base import Backend
from ..coord.errors import Compacted, CoordError, Unavailable
from ..coord.session import Session
from ..coord.types import Delete, EventType, KeyValue, Put, create_revision, missing
from ..coord.types import Get as GetOp

log = logging.getLogger(__name__)

DEFAULT_TTL = 30


class LockError(CoordError):
    """Base class of lock errors."""


class LockTimeout(LockError, TimeoutError):
    """The lock was not acquired within the timeout (its waiter key is gone)."""


class LockLost(LockError):
    """Our waiter key vanished while waiting (lease expired or revoked)."""


# Process-local guards of contenders sharing one session: {session: {prefix: Lock}}.
_shared_guards: weakref.WeakKeyDictionary[Session, dict[str, threading.Lock]] = (
    weakref.WeakKeyDictionary())
_shared_guards_lock = threading.Lock()


def _guard_for(session: Session, prefix: str) -> threading.Lock:
    with _shared_guards_lock:
        per_session = _shared_guards.setdefault(session, {})
        return per_session.setdefault(prefix, threading.Lock())


class Lock:
    """A distributed lock named by ``name_prefix`` (see module docstring).

    ``session``: a started :class:`Session` whose lease the lock key hangs
    on; without one, each acquisition starts its own session of ``ttl``
    seconds and revokes it on release.
    """

    def __init__(self, backend: Backend, name_prefix: str, session: Session | None = None,
                 ttl: int = DEFAULT_TTL, *, retry_interval: float = 0.2):
        if not name_prefix.strip("/"):
            raise ValueError("lock name prefix must not be empty")
        if session is None and int(ttl) < 2:
            raise ValueError("lock ttl must be at least 2 seconds")
        self.backend = backend
        self.prefix = name_prefix.rstrip("/") + "/"
        self.ttl = int(ttl)
        self.retry_interval = retry_interval
        self._given_session = session
        self._guard = _guard_for(session, self.prefix) if session is not None else threading.Lock()
        self._session: Session | None = None  # the session of the current hold/wait
        self._key: str | None = None
        self._token: int | None = None
        self._held = False

    # --- public --------------------------------------------------------------
    @property
    def token(self) -> int | None:
        """Fencing token of the current hold (the lock key's create
        revision), or None when this lock is not held."""
        return self._token if self._held else None

    @property
    def key(self) -> str | None:
        return self._key if self._held else None

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        """Take the lock; True when held. ``blocking=False`` tries once.
        ``timeout`` (seconds, None or -1 = forever) bounds a blocking wait;
        on timeout the waiter key is deleted and False is returned.

        Raises :class:`LockLost` if our waiter key vanished, and CoordError
        when the store cannot be reached to enqueue."""
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
        """Delete our key (if it is still ours). Raises RuntimeError when
        not held; a CoordError from the store is raised after the local
        state was reset (the key then goes with the lease)."""
        if not self._held:
            raise RuntimeError("release of an unheld lock")
        try:
            self._withdraw()
        finally:
            self._guard.release()

    def is_held(self) -> bool:
        """True when we hold the lock and our key still exists in the store
        (a read: it may be stale by the time you use it; prefer the token)."""
        if not self._held:
            return False
        kv = self.backend.get(self._key)
        return kv is not None and kv.create_revision == self._token

    def holder(self) -> KeyValue | None:
        """The current holder's key (lowest create revision), or None."""
        kvs = self._contenders(self.backend.get_prefix(self.prefix, keys_only=True).kvs)
        return min(kvs, key=lambda kv: kv.create_revision) if kvs else None

    def _contenders(self, kvs) -> list[KeyValue]:
        # only direct children: a lock named "a/b" must not contend with "a"
        return [kv for kv in kvs if "/" not in kv.key[len(self.prefix):]]

    def __enter__(self) -> Lock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __repr__(self) -> str:
        state = f"held token={self._token}" if self._held else "unlocked"
        return f"<Lock {self.prefix} {state}>"

    # --- protocol --------------------------------------------------------------
    def _contend(self, blocking: bool, deadline: float | None) -> bool:
        """Enqueue and wait for our turn (guard held). On failure or timeout
        the waiter key is withdrawn."""
        if self._given_session is not None:
            self._session = self._given_session
        else:
            self._session = Session(self.backend, self.ttl, name=f"lock:{self.prefix}").start()
        try:
            self._enqueue()
            if self._wait_turn(blocking, deadline):
                self._held = True
                return True
        except BaseException:
            self._withdraw(quiet=True)
            raise
        self._withdraw(quiet=True)
        return False

    def _enqueue(self) -> None:
        lease = self._session.lease_id
        key = f"{self.prefix}{lease:x}"
        result = self.backend.txn([missing(key)], [Put(key, b"", lease), GetOp(key)], [GetOp(key)])
        found = result.responses[-1]
        if not found:  # deleted between our put and read: lease just died
            raise LockLost(f"lock {self.prefix}: waiter key {key} vanished at once (lease lost?)")
        self._key, self._token = key, found[0].create_revision

    def _wait_turn(self, blocking: bool, deadline: float | None) -> bool:
        while True:
            try:
                predecessor, revision = self._predecessor()
            except Unavailable as exc:  # transient: retry until the deadline
                if not blocking or not self._pause(deadline, exc):
                    raise
                continue
            if predecessor is None:
                return True
            if not blocking or not self._wait_deleted(predecessor.key, revision, deadline):
                return False

    def _predecessor(self) -> tuple[KeyValue | None, int]:
        """The key just before ours in create order (None: we hold it) and
        the revision of the read."""
        result = self.backend.get_prefix(self.prefix, keys_only=True)
        contenders = self._contenders(result.kvs)
        if not any(kv.key == self._key and kv.create_revision == self._token for kv in contenders):
            raise LockLost(f"lock {self.prefix}: our key {self._key} vanished (lease expired or revoked)")
        earlier = [kv for kv in contenders if kv.create_revision < self._token]
        if not earlier:
            return None, result.revision
        return max(earlier, key=lambda kv: kv.create_revision), result.revision

    def _wait_deleted(self, key: str, revision: int, deadline: float | None) -> bool:
        """Block until ``key`` is deleted after ``revision``; False only when
        the deadline passed. Any interruption returns True (re-check)."""
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            return False
        try:
            stream = self.backend.watch(key, start_revision=revision + 1)
        except Compacted:
            return True
        except Unavailable as exc:
            return self._pause(deadline, exc)
        timed_out = threading.Event()

        def expire() -> None:
            timed_out.set()
            stream.cancel()

        timer = threading.Timer(remaining, expire) if remaining is not None else None
        if timer is not None:
            timer.daemon = True
            timer.start()
        try:
            for batch in stream:
                if any(ev.type is EventType.DELETE for ev in batch.events):
                    return True
        except Compacted:
            return True
        except Unavailable as exc:
            return self._pause(deadline, exc)
        finally:
            if timer is not None:
                timer.cancel()
            stream.cancel()
        # the stream ended: our timer, or the backend was closed (the next
        # read then raises Closed)
        return not timed_out.is_set()

    def _pause(self, deadline: float | None, exc: CoordError) -> bool:
        """Wait a retry interval (bounded by the deadline); False when the
        deadline passed."""
        log.debug("lock %s: store unavailable while waiting (%s), retrying", self.prefix, exc)
        wait = self.retry_interval
        if deadline is not None:
            wait = min(wait, deadline - time.monotonic())
            if wait <= 0:
                return False
        threading.Event().wait(wait)
        return True

    def _withdraw(self, quiet: bool = False) -> None:
        """Delete our key (only if it is still the one we created) and drop
        an own session (revoking its lease). Resets local state first."""
        key, token, session = self._key, self._token, self._session
        self._key, self._token, self._session, self._held = None, None, None, False
        try:
            if session is not None and session is not self._given_session:
                session.close(revoke=True)  # the revoke deletes the key
            elif key is not None:
                self.backend.txn([create_revision(key, "=", token)], [Delete(key)])
        except CoordError as exc:
            if not quiet:
                raise
            log.warning("lock %s: could not delete waiter key %s: %s", self.prefix, key, exc)
