"""What a member shows of its roles, read from its parts on the loop thread.

:func:`roles_status` is the status the member record, ``/api/status`` and the
metrics carry (each role's runner status, its barriers, pause, registrations,
rollout and children); :func:`waits` what its roles wait for (the wait log);
:func:`children_health` a role's children as a leader judges them
(``RuntimeContext.children_health``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

from ..process.slot import Slot, SlotState
from ..roles.base import RoleRunner
from .barriers import BarrierGate
from .readiness import Readiness
from .rollouts import Rollouts
from .roster import Roster
from .wiring import SeedWiring

Children = list[tuple[RoleRunner, str, Slot]]


def roles_status(roster: Roster, gate: BarrierGate, paused: Callable[[str], bool], wiring: SeedWiring,
                 rollouts: Rollouts, children: Children, readiness: Readiness, now: float) -> dict[str, Any]:
    runners = roster.runners
    status = {name: roster.status(runner) for name, runner in runners.items()}
    for name in status:
        waiting = gate.waiting_on(name)
        if waiting:
            status[name]["waiting_for"] = waiting
        if paused(name):
            status[name]["paused"] = True
        registered = wiring.status(name)
        if registered:
            status[name]["registered"] = registered
        rollout = rollouts.status(name)
        if rollout:
            status[name]["rollout"] = rollout
    for runner, key, slot in children:
        if runner.name not in status or runners.get(runner.name) is not runner:
            continue  # a runner retiring after a reload
        child = slot.child
        entry = status[runner.name].setdefault("children", {})
        spec = child.spec if child else slot.desired
        entry[key] = {"name": slot.child_name, "state": slot.state.value, "pid": child.pid if child else None,
                      "restarts": slot.restarts, "last_exit": slot.last_exit,
                      "index": spec.vars.index if spec is not None else None,
                      "restarts_by_reason": dict(slot.restarts_by_reason),
                      **readiness.status(slot.name, now)}
    return status


def waits(roster: Roster, gate: BarrierGate, paused: Callable[[str], bool], now: float) -> list[tuple[str, str]]:
    """(role, what it waits for), for the wait log."""
    found = []
    for name, runner in roster.runners.items():
        held = gate.waiting_on(name)
        if held:
            found.append((name, "start held back by barriers: waits for " + ", ".join(held)))
        if paused(name):
            continue
        described: list[str] = roster.call(runner, "describe_waits",
                                           functools.partial(runner.describe_waits, now), [])
        found += [(name, what) for what in described]
    return found


def children_health(role: str, runners: Mapping[str, RoleRunner], children: Children, readiness: Readiness,
                    now: float) -> dict[str, tuple[bool, bool | None]]:
    """Slot key -> (child alive, ready or None). Readiness is judged for a running
    child only: a crash-looping one (in backoff) ends FAILED through
    ``start_retries``, it does not make its leader step down."""
    health = {}
    for runner, key, slot in children:
        if runner.name == role and runners.get(role) is runner:
            judged = slot.state is SlotState.RUNNING and slot.child is not None
            health[key] = (slot.child is not None, readiness.ready(slot.name, now) if judged else None)
    return health
