"""Is etcd reachable? One line per backoff step while it is not.

The session's keepalives go out every second whatever happens; when they fail
(etcd stopped, network gone) a line per attempt would flood the log. This
tracker, fed the session's events on the loop thread, says it once when
keepalives have failed for a second, then again at growing intervals
(``STEPS``: 1, 2, 4, 8, 16, 32 s, then every minute), with what it means for
the children, and once when etcd answers again::

    etcd at http://127.0.0.1:2379 unreachable since 11:39:28Z; children stopped at lease expiry; retrying every 1s
    etcd at http://127.0.0.1:2379 reachable again after 41.2s

Pure: no I/O, clock passed in.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from ..coord.session import SessionEvent, SessionEventKind

log = logging.getLogger("etcdvisor")

FIRST = 1.0  # seconds of failed keepalives before the first line
STEPS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0)  # gaps between lines; the last one repeats


class StoreHealth:
    def __init__(self, url: str, retry_every: float, *, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time):
        self.url = url
        self.retry_every = retry_every
        self.clock = clock
        self.wall = wall
        self.since: float | None = None  # monotonic time of the first failure in a row
        self.since_wall = 0.0
        self.expired = False  # the lease expired (or was lost) during this outage
        self.lines = 0
        self.next_line: float | None = None
        self.detail = ""

    def on_session(self, event: SessionEvent, now: float) -> None:
        if event.kind is SessionEventKind.ERROR:
            if self.since is None:
                self.since, self.since_wall, self.lines = now, self.wall(), 0
                self.next_line = now + FIRST
            self.detail = " ".join(event.detail.split())[:200]
        elif event.kind in (SessionEventKind.EXPIRED, SessionEventKind.LOST):
            self.expired = True
        elif event.kind in (SessionEventKind.KEEPALIVE, SessionEventKind.NEW_LEASE):
            if self.since is not None and self.lines:
                how = "a new lease" if event.kind is SessionEventKind.NEW_LEASE else f"lease {event.lease_id:x}"
                log.info("etcd at %s reachable again after %.1fs (%s)", self.url, now - self.since, how)
            self.since, self.next_line, self.expired = None, None, False

    def next_deadline(self) -> float | None:
        return self.next_line

    def tick(self, now: float, lease_expires_in: float | None) -> None:
        """Log the line due by ``now``. ``lease_expires_in``: seconds until lease-bound
        children are stopped (None: the lease is known expired or lost)."""
        if self.since is None or self.next_line is None or now < self.next_line:
            return
        when = time.strftime("%H:%M:%SZ", time.gmtime(self.since_wall))
        if self.expired or lease_expires_in is None or lease_expires_in <= 0:
            children = "children stopped at lease expiry"
        else:
            children = f"lease-bound children stop at lease expiry (in {lease_expires_in:.0f}s)"
        log.warning("etcd at %s unreachable since %s; %s; retrying every %gs (%s)", self.url, when, children,
                    self.retry_every, self.detail or "no answer")
        self.next_line = now + STEPS[min(self.lines, len(STEPS) - 1)]
        self.lines += 1
