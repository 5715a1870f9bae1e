"""A lease kept alive in the background: the life of one member.

Everything a process owns in the store (membership keys, election keys,
claims) hangs on its session's lease, so a crash cleans up by itself after
the TTL and :meth:`Session.close` (revoke) makes others react at once.

Keepalives go out every ``interval`` seconds (default 1 s), each with a short
timeout. The session records ``last_alive_sent``: the monotonic time at which
the last keepalive that came back alive was *sent*. The server cannot expire
the lease before ``last_alive_sent + ttl`` (measured on a clock that may run
up to ``rho`` fast or slow, see :mod:`etcdvisor.timing`), which is what the
supervisor's safety deadlines are computed from.

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
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

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

    def __init__(self, backend: Backend, ttl: int, *, interval: float = 1.0,
                 keepalive_timeout: float | None = None, clock: Callable[[], float] = time.monotonic,
                 name: str = "session"):
        if ttl < 2:
            raise ValueError("session ttl must be at least 2 seconds")
        self.backend = backend
        self.requested_ttl = int(ttl)
        self.interval = interval
        self.keepalive_timeout = keepalive_timeout or max(0.5, min(interval, ttl / 4))
        self.clock = clock
        self.name = name
        self.state = SessionState.NEW
        self.lease_id = 0
        self.ttl = 0
        self.last_alive_sent = 0.0
        self._listeners: list[Callable[[SessionEvent], None]] = []
        self._stop = threading.Event()
        self._kick = threading.Event()
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    # --- public --------------------------------------------------------------
    def add_listener(self, listener: Callable[[SessionEvent], None]) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def start(self) -> Session:
        """Grant the lease (raises CoordError if the backend is down) and
        start the keepalive thread."""
        self._grant()
        self._thread = threading.Thread(target=self._run, name=f"keepalive:{self.name}", daemon=True)
        self._thread.start()
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
        """Send the next keepalive now instead of at the next interval (used
        to confirm a fresh win quickly without blocking the caller)."""
        self._kick.set()

    def close(self, revoke: bool = True) -> None:
        """Stop keepalives and (by default) revoke the lease so every key on
        it disappears at once."""
        self._stop.set()
        self._kick.set()
        if self._thread and self._thread is not threading.current_thread():
            self._thread.join(self.keepalive_timeout + 1)
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

    def _run(self) -> None:
        while True:
            self._kick.wait(self.interval)
            self._kick.clear()
            if self._stop.is_set():
                return
            if self.state in (SessionState.LOST,):
                self._try_new_lease()
            else:
                self._keepalive_once()

    def _keepalive_once(self) -> bool:
        sent = self.clock()
        try:
            ttl = self.backend.lease_keepalive(self.lease_id, timeout=self.keepalive_timeout)
        except CoordError as exc:
            self._emit(SessionEventKind.ERROR, str(exc))
            if self.state is SessionState.ALIVE and self.clock() >= self.expiry_bound():
                self._set_state(SessionState.EXPIRED)
                self._emit(SessionEventKind.EXPIRED, "no keepalive confirmed within the TTL")
            return False
        if self._stop.is_set():
            return False
        if ttl <= 0:
            log.warning("%s: lease %x is gone on the server", self.name, self.lease_id)
            self._set_state(SessionState.LOST)
            self._emit(SessionEventKind.LOST, "lease expired or revoked")
            return False
        with self._changed:
            self.ttl = ttl
            self.last_alive_sent = max(self.last_alive_sent, sent)
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
