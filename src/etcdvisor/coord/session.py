"""A lease kept alive in the background: the life of one member.

Everything a process owns in the store (membership keys, election keys,
claims) hangs on its session's lease, so a crash cleans up by itself after
the TTL and :meth:`Session.close` (revoke) makes others react at once.

Keepalives go out on a fixed cadence measured from *send* times: one every
``interval`` seconds (default 1 s), whether or not earlier ones have come
back, so a slow reply never delays the next send (docs/safety.md, rule 1).
Several may be in flight at once, each on a worker thread of a small pool
and each with its own timeout (``keepalive_timeout``, default
:func:`etcdvisor.timing.keepalive_timeout`); when every worker is busy the
send is skipped and counted, never queued (a queued send would carry a stale
send time). The session records ``last_alive_sent``: the monotonic time at
which the newest keepalive that came back alive was *sent* (replies may
arrive out of order; the newest send time wins). The server cannot expire
the lease before ``last_alive_sent + ttl`` (measured on a clock that may run
up to ``rho`` fast or slow, see :mod:`etcdvisor.timing`), which is what the
supervisor's safety deadlines are computed from.

Threads: one *pacer* (sends on the cadence, notices expiry, re-grants a
lost lease) and ``workers`` keepalive workers; all are daemons that stop
on :meth:`Session.close`.

States (``SessionState``)::

    NEW -> ALIVE            lease granted
    ALIVE -> ALIVE          keepalive answered (listeners get KEEPALIVE)
    ALIVE -> EXPIRED        no answer before last_alive_sent + ttl: we must
                            assume the server dropped it
    ALIVE/EXPIRED -> LOST   the server said the lease is gone (TTL 0)
    EXPIRED -> ALIVE        a late keepalive found the lease still alive
    LOST -> ALIVE           a new lease was granted (listeners get NEW_LEASE)
    any -> CLOSED           close()

Listeners are called on the keepalive thread with a :class:`SessionEvent`;
they must be quick (put on a queue).
"""

from __future__ import annotations

import enum
import logging
import math
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from .. import timing
from .base import Backend
from .errors import CoordError

log = logging.getLogger(__name__)


class SessionState(enum.Enum):
    NEW = "new"
    ALIVE = "alive"
    EXPIRED = "expired"
    LOST = "lost"
    CLOSED = "closed"


class SessionEventKind(enum.Enum):
    KEEPALIVE = "keepalive"  # a keepalive came back alive
    EXPIRED = "expired"  # deadline passed without a confirmed keepalive
    LOST = "lost"  # the lease is gone on the server
    NEW_LEASE = "new_lease"  # a replacement lease was granted
    ERROR = "error"  # a keepalive failed (lease may still be alive)


@dataclass(frozen=True)
class SessionEvent:
    kind: SessionEventKind
    lease_id: int
    ttl: int
    last_alive_sent: float
    detail: str = ""
    rtt: float | None = None  # KEEPALIVE: seconds from send to the alive answer


class Session:
    """See module docstring."""

    def __init__(self, backend: Backend, ttl: int, *, interval: float = timing.KEEPALIVE_INTERVAL,
                 keepalive_timeout: float | None = None, clock: Callable[[], float] = time.monotonic,
                 name: str = "session"):
        if ttl < 2:
            raise ValueError("session ttl must be at least 2 seconds")
        self.backend = backend
        self.requested_ttl = int(ttl)
        self.interval = interval
        self.keepalive_timeout = keepalive_timeout or timing.keepalive_timeout(ttl)
        # enough workers that a keepalive can go out every interval while the
        # earlier ones wait out their whole timeout
        self.workers = min(16, math.ceil(self.keepalive_timeout / interval) + 1)
        self.clock = clock
        self.name = name
        self.state = SessionState.NEW
        self.lease_id = 0
        self.ttl = 0
        self.last_alive_sent = 0.0
        self.skipped_sends = 0  # cadence ticks with every worker still waiting
        self._listeners: list[Callable[[SessionEvent], None]] = []
        self._stop = threading.Event()
        self._kick = threading.Event()
        self._changed = threading.Condition()
        self._jobs: queue.SimpleQueue[int | None] = queue.SimpleQueue()  # a lease id, None: stop
        self._idle = 0  # workers waiting for a job (guarded by _changed)
        self._threads: list[threading.Thread] = []

    # --- public --------------------------------------------------------------
    def add_listener(self, listener: Callable[[SessionEvent], None]) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[SessionEvent], None]) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def start(self) -> Session:
        """Grant the lease (raises CoordError if the backend is down) and
        start the keepalive threads."""
        self._grant()
        return self._start_threads()

    def resume(self, lease_id: int, ttl: int, last_alive_sent: float) -> Session:
        """Keep an existing lease alive instead of granting one (an in-place upgrade:
        the previous image of this process held it; ``last_alive_sent`` is its last
        confirmed send, on the same monotonic clock). One keepalive goes out at once;
        raises CoordError if it does not come back alive."""
        with self._changed:
            self.lease_id, self.ttl, self.last_alive_sent = lease_id, ttl, last_alive_sent
        self._set_state(SessionState.ALIVE)
        if not self._keepalive_once(lease_id):
            raise CoordError(f"{self.name}: lease {lease_id:x} is not alive any more")
        return self._start_threads()

    def _start_threads(self) -> Session:
        self._threads = [threading.Thread(target=self._pace, name=f"keepalive:{self.name}", daemon=True)]
        self._threads += [threading.Thread(target=self._work, name=f"keepalive:{self.name}:{n}", daemon=True)
                          for n in range(self.workers)]
        for thread in self._threads:
            thread.start()
        return self

    @property
    def alive(self) -> bool:
        return self.state is SessionState.ALIVE

    def expiry_bound(self) -> float:
        """Earliest monotonic time the server could expire the lease."""
        return self.last_alive_sent + self.ttl

    def confirm(self, after: float, timeout: float) -> bool:
        """Block until a keepalive *sent* after ``after`` came back alive
        (docs/safety.md, rule 2: start only when the win is confirmed)."""
        deadline = self.clock() + timeout
        self.request_keepalive()
        with self._changed:
            while not (self.state is SessionState.ALIVE and self.last_alive_sent > after):
                remaining = deadline - self.clock()
                if remaining <= 0 or self.state is SessionState.CLOSED:
                    return False
                self._changed.wait(min(remaining, self.interval))
        return True

    def request_keepalive(self) -> None:
        """Send the next keepalive now instead of at the next tick (used to
        confirm a fresh win quickly without blocking the caller); the cadence
        then continues from this send."""
        self._kick.set()

    def close(self, revoke: bool = True) -> None:
        """Stop keepalives and (by default) revoke the lease so every key on
        it disappears at once. Workers still waiting for a reply are not
        joined (each ends within its own timeout)."""
        self._stop.set()
        self._kick.set()
        for _ in range(self.workers):
            self._jobs.put(None)
        if self._threads and self._threads[0] is not threading.current_thread():
            self._threads[0].join(self.keepalive_timeout + 1)
        lease = self.lease_id
        self._set_state(SessionState.CLOSED)
        if revoke and lease:
            try:
                self.backend.lease_revoke(lease)
            except CoordError as exc:
                log.warning("%s: could not revoke lease %x: %s", self.name, lease, exc)

    # --- internals -----------------------------------------------------------
    def _grant(self) -> None:
        sent = self.clock()
        lease = self.backend.lease_grant(self.requested_ttl)
        with self._changed:
            self.lease_id, self.ttl, self.last_alive_sent = lease.id, lease.ttl, sent
        self._set_state(SessionState.ALIVE)

    def _pace(self) -> None:
        """The cadence: a send every ``interval`` from the previous send."""
        next_send = self.clock() + self.interval
        while not self._stop.is_set():
            now = self.clock()
            wake = next_send
            if self.state is SessionState.ALIVE:
                wake = min(wake, self.expiry_bound())
            if self._kick.wait(max(0.0, wake - now)) or self.clock() >= next_send:
                self._kick.clear()
                if self._stop.is_set():
                    return
                if self.state is SessionState.LOST:
                    self._try_new_lease()
                else:
                    self._dispatch()
                next_send = self.clock() + self.interval
            self._check_expiry()

    def _dispatch(self) -> None:
        """Hand one keepalive to an idle worker; skip it if none is idle."""
        with self._changed:
            if self._idle == 0:
                self.skipped_sends += 1
                log.debug("%s: every keepalive worker is waiting; send skipped", self.name)
                return
            self._idle -= 1
        self._jobs.put(self.lease_id)

    def _work(self) -> None:
        while not self._stop.is_set():
            with self._changed:
                self._idle += 1
            lease = self._jobs.get()
            if lease is None or self._stop.is_set():
                return
            self._keepalive_once(lease)

    def _check_expiry(self) -> None:
        with self._changed:
            expired = self.state is SessionState.ALIVE and self.clock() >= self.expiry_bound()
        if expired:
            self._set_state(SessionState.EXPIRED)
            self._emit(SessionEventKind.EXPIRED, "no keepalive confirmed within the TTL")

    def _keepalive_once(self, lease: int | None = None) -> bool:
        """One keepalive of ``lease`` (default: the current one), sent now;
        True when it confirmed the lease alive with a newer send time."""
        lease = self.lease_id if lease is None else lease
        sent = self.clock()
        try:
            ttl = self.backend.lease_keepalive(lease, timeout=self.keepalive_timeout)
        except CoordError as exc:
            if not self._stop.is_set():  # a call cut short by close() is no news
                self._emit(SessionEventKind.ERROR, str(exc))
            return False
        if self._stop.is_set() or lease != self.lease_id:
            return False  # closed meanwhile, or the answer is about a replaced lease
        if ttl <= 0:
            with self._changed:
                if self.state is SessionState.LOST:
                    return False
            log.warning("%s: lease %x is gone on the server", self.name, lease)
            self._set_state(SessionState.LOST)
            self._emit(SessionEventKind.LOST, "lease expired or revoked")
            return False
        with self._changed:
            if self.state is SessionState.LOST or sent <= self.last_alive_sent:
                return False  # an older send than one already confirmed: nothing new
            self.ttl = ttl
            self.last_alive_sent = sent
        rtt = self.clock() - sent
        self._set_state(SessionState.ALIVE)
        self._emit(SessionEventKind.KEEPALIVE, rtt=rtt)
        return True

    def _try_new_lease(self) -> None:
        try:
            self._grant()
        except CoordError as exc:
            self._emit(SessionEventKind.ERROR, f"cannot grant a new lease: {exc}")
            return
        log.info("%s: new lease %x granted", self.name, self.lease_id)
        self._emit(SessionEventKind.NEW_LEASE)

    def _set_state(self, state: SessionState) -> None:
        with self._changed:
            if self.state is SessionState.CLOSED:
                return
            self.state = state
            self._changed.notify_all()

    def _emit(self, kind: SessionEventKind, detail: str = "", rtt: float | None = None) -> None:
        event = SessionEvent(kind, self.lease_id, self.ttl, self.last_alive_sent, detail, rtt)
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("%s: session listener failed", self.name)
