"""Immutable events put on the decision loop's inbox by edge threads and
signal handlers. Only the loop acts on them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Signalled:
    signum: int


@dataclass(frozen=True)
class Wake:
    """Something changed (SIGCHLD, a timer): just reconcile."""

    reason: str = ""


@dataclass(frozen=True)
class SessionChanged:
    event: Any  # coord.session.SessionEvent


@dataclass(frozen=True)
class RoleEvent:
    """An event for one role's runner (membership, leadership...)."""

    role: str
    payload: Any
    at: float  # monotonic time it was observed
    source: int = 0  # serial of the runner that posted it: a runner replaced by a reload
    # may still have events in flight, and they must not reach its successor
