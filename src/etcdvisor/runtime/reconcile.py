"""Reconcile runners' desired children with process slots, and keep
lease-bound children inside the lease (docs/safety.md, rule 1).

Each runner says which children should run (slot key -> ChildSpec); this
module creates, updates and drops :class:`~etcdvisor.process.slot.Slot`
objects to match, routes slot events back to the runner that owns the slot,
and after every keepalive moves every lease-bound child's deadlines:

    SIGTERM at  t_k + T*(1-rho) - margin - stop_timeout - kill_bound
    SIGKILL at  that + stop_timeout

where ``t_k`` is the send time of the last keepalive that came back alive
and ``T`` the granted TTL (see :mod:`etcdvisor.timing`). The same deadlines
go to the watchdog helper, which enforces them even while this process is
frozen.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

from .. import timing
from ..process.backoff import RestartBackoff
from ..process.manager import ProcessManager
from ..process.slot import Exited, Failed, Slot, SlotEvent, SpawnFailed, Started, Stopped
from ..roles.base import RoleRunner

log = logging.getLogger("etcdvisor")


def _slot_of(child_name: str) -> str | None:
    """``worker[0]`` -> ``0``, ``tick@T`` -> ``T``, ``thumbs#7`` -> ``7``, ``api`` -> None."""
    for opener, closer in (("[", "]"), ("@", ""), ("#", "")):
        head, sep, tail = child_name.partition(opener)
        if sep:
            return tail[:-1] if closer and tail.endswith(closer) else tail
    return None


@dataclass
class _Owned:
    runner: RoleRunner
    key: str
    slot: Slot


class Reconciler:
    def __init__(self, manager: ProcessManager):
        self.manager = manager
        self._slots: dict[str, _Owned] = {}  # slot name -> owner
        self.observer = None  # (role, SlotEvent) -> None: metrics, called before the runner
        # called when a runner raises while told about its child (runtime.roster fences it)
        self.fault: Callable[[RoleRunner, str, BaseException], None] | None = None

    def slots_of(self, runner: RoleRunner) -> dict[str, Slot]:
        return {o.key: o.slot for o in self._slots.values() if o.runner is runner}

    def apply(self, runner: RoleRunner, desired: dict) -> None:
        """Make ``runner``'s slots match ``desired`` (key -> ChildSpec)."""
        current = self.slots_of(runner)
        for key, slot in current.items():
            if key not in desired:
                slot.set_desired(None)
        for key, spec in desired.items():
            slot = current.get(key)
            if slot is None:
                slot = self._new_slot(runner, key, spec)
            else:
                slot.set_desired(spec)

    def _new_slot(self, runner: RoleRunner, key: str, spec) -> Slot:
        role = runner.spec
        name = f"{role.name}/{key}"
        slot = self.manager.new_slot(spec, restart=runner.restart_policy(key),
                                     backoff=RestartBackoff(initial=role.backoff.initial, maximum=role.backoff.max),
                                     start_retries=role.start_retries, name=name)
        self._slots[name] = _Owned(runner, key, slot)
        return slot

    # --- safety ----------------------------------------------------------------
    def lease_confirmed(self, t_k: float, ttl: int) -> None:
        """A keepalive sent at ``t_k`` came back alive with ``ttl``: move every
        slot's deadlines (each by its own stop_timeout), now and for new slots."""

        def deadlines(slot: Slot) -> tuple[float, float]:
            spec = slot.desired or (slot.child.spec if slot.child else None)
            stop_timeout = spec.stop_timeout if spec else 0.0
            return (timing.term_deadline(t_k, ttl, stop_timeout),
                    timing.kill_deadline(t_k, ttl, stop_timeout))

        self.manager.set_lease_deadlines(rule=deadlines)

    # --- ticking ----------------------------------------------------------------
    def tick(self, now: float) -> list[SlotEvent]:
        events = self.manager.tick(now)
        for event in events:
            owned = self._slots.get(event.slot)
            if owned is None:
                continue
            _log_event(owned, event)
            if self.observer is not None:
                self.observer(owned.runner.name, event)
            try:
                owned.runner.on_slot_event(owned.key, event, now)
            except Exception as exc:
                if self.fault is None:
                    raise
                self.fault(owned.runner, "on_slot_event", exc)
        for name, owned in list(self._slots.items()):
            if owned.slot.desired is None and owned.slot.idle:
                self.manager.remove_slot(owned.slot)
                del self._slots[name]
        return events

    def next_deadline(self) -> float | None:
        return self.manager.next_deadline()

    def children(self) -> list[tuple[RoleRunner, str, Slot]]:
        return [(o.runner, o.key, o.slot) for o in self._slots.values()]


def _log_event(owned: _Owned, event: SlotEvent) -> None:
    spec = owned.slot.child.spec if owned.slot.child else owned.slot.desired
    who = spec.name if spec else owned.slot.name
    log = logging.LoggerAdapter(logging.getLogger("etcdvisor"), {"role": owned.runner.name, "slot": _slot_of(who)})
    if isinstance(event, Started):
        log.info("%s: started pid %d", who, event.pid)
    elif isinstance(event, Exited):
        then = f", restart in {max(0.0, event.restart_at - time.monotonic()):.1f}s" if event.restart_at else ""
        log.info("%s: exited with %s after %.1fs%s", who, _code(event.code), event.uptime, then)
    elif isinstance(event, Stopped):
        log.info("%s: stopped (%s)", who, _code(event.code))
    elif isinstance(event, Failed):
        log.error("%s: FAILED: %s", who, event.reason)
    elif isinstance(event, SpawnFailed):
        log.error("%s", event.message)


def _code(code) -> str:
    if code is None:
        return "no child"
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"status {code}"
