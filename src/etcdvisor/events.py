"""Immutable events put on the decision loop's inbox by edge threads and
signal handlers. Only the loop acts on them."""

from __future__ import annotations

from collections.abc import Callable
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
    event: Any  # coord.session.SessionEvent (Any: events sit below coord, see tests/unit/test_layout.py)


@dataclass(frozen=True)
class RoleEvent:
    """An event for one role's runner (membership, leadership...)."""

    role: str
    payload: Any
    at: float  # monotonic time it was observed
    source: int = 0  # serial of the runner that posted it: a runner replaced by a reload
    # may still have events in flight, and they must not reach its successor


@dataclass(frozen=True)
class Effect:
    """I/O a runner asked for (an etcd read or write, a file write...).

    ``call`` runs off the loop thread; its outcome comes back to the loop as
    ``RoleEvent(role, EffectDone(...), source=serial)`` and ``done(result,
    error)`` is called there. Effects of one role run one at a time, in the
    order they were queued."""

    role: str
    serial: int  # the runner that queued it (see RoleEvent.source)
    what: str  # one line for logs
    call: Callable[[], Any]
    done: Callable[[Any, BaseException | None], None] | None = None


@dataclass(frozen=True)
class EffectDone:
    effect: Effect
    result: Any = None
    error: BaseException | None = None
