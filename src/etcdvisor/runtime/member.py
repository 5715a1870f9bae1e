"""This supervisor's record in the cluster: ``members/<id>`` on the lease.

The record is created with a transaction that fails if the id is already
held by another live member (two supervisors must never share an id: their
shard and election keys would collide). It carries what ``supervisor
status`` shows and is rewritten when the state changes (at most once per
``min_interval``), so an idle member writes nothing.

During a transition (:func:`in_transition`: a role joining, settling or
handing off, a leader stepping down, a child stopping or started and not
ready yet) the record is not
rewritten at each step: the change waits until the transition is over, or
``transition_hold`` seconds (2 s) after the first change not written (a long
hand-off still shows where it waits, as ``supervisor status`` promises), so a
short reshard costs each member one write, not one per step (issue 17: every member's record writes go to every
member watching ``members/``).

When the hold runs out and all that is left of the transition is children
that started and become ready on a known timer (``min_ready``, no readiness or
startup probe, no ``notify``), the record waits for that time too, if it is at
most ``ready_hold`` (2 s) beyond the hold: a reshard (``settle`` 1 s, the hand-off,
``min_ready`` 2 s) is then one write showing the new children ready, not one
showing them "started, not ready yet" and one more two seconds later.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from .. import __version__
from ..coord.base import Backend
from ..coord.errors import CoordError
from ..coord.records import MEMBER, RecordError, dumps
from ..coord.types import Compare, Get, Put, missing
from .stale import identity, process_start

log = logging.getLogger("etcdvisor")

TRANSIENT_ROLE_STATES = frozenset({"joining", "settling", "handoff"})
TRANSIENT_CHILD_STATES = frozenset({"stopping"})
TRANSITION_HOLD = 2.0
"""Seconds a change made during a transition may wait to be written: a short transition
(a reshard that settles, stops and starts within it) costs one write at its end; a
longer one (a hand-off waiting for another member's child) shows in status within this
time, then at most once per this time."""


def in_transition(roles: dict[str, Any]) -> bool:
    """True while some role of this status is between two stable states: joining,
    settling or handing off (sharded), stepping down (leader roles), retiring or
    starting after a reload (``phase``), or one of its children is stopping or
    has started and is not ready yet (no probe failing)."""
    for entry in _entries(roles):
        if _role_in_transition(entry):
            return True
        if any(_child_in_transition(child) for child in _children(entry)):
            return True
    return False


def only_starting(roles: dict[str, Any]) -> bool:
    """True when what keeps this status in transition is only children that started
    and are not ready yet: no role joining, settling, handing off, stepping down or
    retiring, no child stopping."""
    return not any(_role_in_transition(entry)
                   or any(child.get("state") in TRANSIENT_CHILD_STATES for child in _children(entry))
                   for entry in _entries(roles))


def _entries(roles: dict[str, Any]) -> list[dict[str, Any]]:
    return [entry for entry in roles.values() if isinstance(entry, dict)]


def _children(entry: dict[str, Any]) -> list[dict[str, Any]]:
    children = entry.get("children")
    return [c for c in children.values() if isinstance(c, dict)] if isinstance(children, dict) else []


def _role_in_transition(entry: dict[str, Any]) -> bool:
    return bool(entry.get("state") in TRANSIENT_ROLE_STATES or entry.get("stopping")
                or entry.get("stepping_down") or entry.get("phase"))


def _child_in_transition(child: dict[str, Any]) -> bool:
    """Stopping, or running but not ready yet with no probe failing (``min_ready``,
    a startup or readiness probe still to pass): the ready record follows soon."""
    state = child.get("state")
    return state in TRANSIENT_CHILD_STATES or (
        state == "running" and child.get("ready") is False and child.get("probe_failure") is None)


class MemberIdInUse(CoordError):
    pass


class MemberRecord:
    def __init__(self, backend: Backend, key: str, member_id: str, *, min_interval: float = 1.0,
                 clock: Callable[[], float] = time.monotonic, ttl: int | None = None,
                 transition_hold: float = TRANSITION_HOLD, ready_hold: float = TRANSITION_HOLD):
        self.backend = backend
        self.transition_hold = transition_hold
        self.ready_hold = ready_hold  # how long past the hold a known ready time may be waited for
        self._pending_since: float | None = None  # the first change not written yet
        self.key = key
        self.member_id = member_id
        self.min_interval = min_interval
        self.clock = clock
        self.ttl = ttl  # the lease TTL asked for: status tells a member that stopped keeping alive
        self.started = time.time()
        self.upgraded: float | None = None  # the last in-place upgrade (runtime/upgrade.py)
        self.upgrades = 0
        self._written: dict[str, Any] | None = None
        self._last_write = 0.0
        self._lease = 0
        self._writing = False  # a write is in flight
        self._who = identity()  # boot id, pid namespace, start time (runtime/stale.py)

    def set_watchdog(self, pid: int | None) -> None:
        """The watchdog that kills our children if we die: a later start on this host
        treats this record as dead only once it is gone too. Rewritten at the next update."""
        self._who.update(watchdog=pid, watchdog_start=process_start(pid) if pid else None)
        self._written = None

    def _document(self, roles: dict[str, Any]) -> dict[str, Any]:
        doc = {"member": self.member_id, "host": socket.gethostname(), "pid": os.getpid(),
               "started": self.started, "roles": roles, "version": __version__,
               "upgraded": self.upgraded, "upgrades": self.upgrades}
        if self.ttl is not None:
            doc["ttl"] = self.ttl
        doc.update(self._who)
        return doc

    def register(self, lease_id: int, roles: dict[str, Any]) -> None:
        """Create the record on ``lease_id``; raise MemberIdInUse when another
        live lease holds it."""
        doc = self._document(roles)
        body = dumps(doc, sort_keys=True).encode("utf-8")
        res = self.backend.txn(
            [missing(self.key)], [Put(self.key, body, lease=lease_id)], [Get(self.key)])
        if not res.succeeded:
            existing = res.responses[0][0] if res.responses and res.responses[0] else None
            if existing is not None and existing.lease != lease_id:
                raise MemberIdInUse(
                    f"member id {self.member_id!r} is already used by a live member "
                    f"({_describe(existing.value)}); set member.id or ETCDVISOR_MEMBER_ID")
            self.backend.put(self.key, body, lease=lease_id)
        self._lease = lease_id
        self._written = doc["roles"]
        self._last_write = self.clock()

    def plan_update(self, roles: dict[str, Any], now: float, *, urgent: bool = False,
                    ready_by: Callable[[float], float | None] | None = None) -> tuple[str | None, float | None]:
        """Loop side: ``(body, None)`` when the record should be rewritten now
        (call :meth:`write` off the loop, then :meth:`written`), ``(None,
        retry_at)`` when rate-limited, ``(None, None)`` when nothing changed.
        ``urgent`` skips the rate limit and the transition hold (a rollout
        waits for the record), as does a change of the set of roles shown.
        ``ready_by(now)``: when every started child that is not ready yet will be
        ready on its ``min_ready`` timer alone (None: unknown, one waits for a probe
        or ``notify``; :meth:`~.readiness.Readiness.ready_by`), asked only when the
        hold ran out during a transition."""
        if roles == self._written or not self._lease:
            self._pending_since = None
            return None, None
        if self._writing:
            return None, None
        if self._pending_since is None:
            self._pending_since = now
        # a role the record does not show yet (or still shows after a reload removed it) is
        # written at once: status names every role a member runs from its start on
        reshaped = self._written is None or roles.keys() != self._written.keys()
        if not urgent and not reshaped:
            if now - self._last_write < self.min_interval:
                return None, self._last_write + self.min_interval
            hold_until = self._pending_since + self.transition_hold
            if in_transition(roles):
                if now < hold_until:
                    return None, hold_until  # the end of the transition comes as a change too
                ready_at = ready_by(now) if ready_by is not None and only_starting(roles) else None
                if ready_at is not None and now < ready_at <= hold_until + self.ready_hold:
                    return None, ready_at  # the children are ready then: one write, not two
        self._writing = True
        self._last_write = now
        self._pending_since = None
        return dumps(self._document(roles), sort_keys=True), None

    def write(self, body: str) -> None:
        """(Effect) Rewrite the record if it is still on our lease."""
        self.backend.txn([Compare(self.key, "lease", "=", self._lease)],
                         [Put(self.key, body.encode("utf-8"), lease=self._lease)])

    def written(self, roles: dict[str, Any], ok: bool) -> None:
        """Loop side: the outcome of :meth:`write` (``ok`` False: try again
        after ``min_interval``)."""
        self._writing = False
        if ok:
            self._written = roles


def _describe(raw: bytes) -> str:
    try:
        doc = MEMBER.decode(raw)
        return f"host {doc['host']}, pid {doc['pid']}"
    except RecordError:
        return "unknown owner"
