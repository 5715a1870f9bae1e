"""What ``/healthz`` and ``/readyz`` answer (see :mod:`.http`), kept apart from
the HTTP server so that a member without ``http`` never imports it."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

STALL_GRACE = 10.0  # a turn may run late by this much (a loaded machine) before /healthz fails
LEASE_GONE = "lease expired or lost: not confirmed alive within the TTL (etcd unreachable?)"


class HttpError(Exception):
    """The listener cannot be opened; the message is one line."""


@dataclass
class Health:
    """Written by the loop (single attribute stores), read by the HTTP thread."""

    clock: Callable[[], float] = time.monotonic
    joined: bool = False
    turn_ended: float | None = None  # monotonic time the last turn ended
    wake_by: float | None = None  # the loop promised to start a turn by then
    failed: str | None = None  # "role X failed: ..." while some role is FAILED
    lease_alive_sent: Callable[[], float | None] = lambda: None
    lease_fresh: float = 3.0
    unready: tuple[str, ...] = ()  # children with a readiness check that are not ready

    def turn(self, ended: float, wake_by: float) -> None:
        self.turn_ended, self.wake_by = ended, wake_by

    def live(self) -> tuple[bool, str]:
        wake_by, ended = self.wake_by, self.turn_ended
        if wake_by is None or ended is None:
            return False, "decision loop not started"
        late = self.clock() - wake_by
        if late > STALL_GRACE:
            return False, f"decision loop stalled: no turn for {late + (wake_by - ended):.1f}s"
        if self.joined and self.lease_alive_sent() is None:
            return False, LEASE_GONE
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        live, reason = self.live()
        if not live:
            return False, reason
        if not self.joined:
            return False, "not joined the cluster yet"
        sent = self.lease_alive_sent()
        if sent is None:
            return False, LEASE_GONE
        age = self.clock() - sent
        if age > self.lease_fresh:
            return False, f"lease not confirmed alive for {age:.1f}s (etcd unreachable?)"
        if self.failed:
            return False, self.failed
        unready = self.unready
        if unready:
            more = f" (and {len(unready) - 5} more)" if len(unready) > 5 else ""
            return False, f"child not ready: {', '.join(unready[:5])}{more}"
        return True, "ready"
