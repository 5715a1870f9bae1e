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
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .. import timing
from ..process.backoff import RestartBackoff
from ..process.manager import ProcessManager
from ..process.slot import Exited, Failed, Slot, SlotEvent, SlotState, SpawnFailed, Started, Stopped
from ..process.spawn import ChildSpec
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
        # (role, SlotEvent) -> None: metrics, called before the runner
        self.observer: Callable[[str, SlotEvent], None] | None = None
        self._confirmed: tuple[float, int] | None = None  # (t_k, ttl) of the last confirmation
        self._reported: set[tuple[int, str]] = set()  # (pid, deadline kind) already logged
        self._held: set[str] = set()  # slots whose start the lease holds back (logged once)
        # called when a runner raises while told about its child (runtime.roster fences it)
        self.fault: Callable[[RoleRunner, str, BaseException], None] | None = None
        # an in-place upgrade hands children over (runtime/upgrade.py): slot name ->
        # adopt(slot, the spec the runner wants), called when the slot is created
        self.adoptions: dict[str, Callable[[Slot, ChildSpec | None], None]] = {}

    def slots_of(self, runner: RoleRunner) -> dict[str, Slot]:
        return {o.key: o.slot for o in self._slots.values() if o.runner is runner}

    def apply(self, runner: RoleRunner, desired: Mapping[str, ChildSpec]) -> None:
        """Make ``runner``'s slots match ``desired`` (key -> ChildSpec)."""
        current = self.slots_of(runner)
        for key, slot in current.items():
            if key not in desired:
                slot.set_desired(None)
        for key, spec in desired.items():
            existing = current.get(key)
            if existing is None:
                self._new_slot(runner, key, spec)
            else:
                existing.set_desired(spec)

    def _new_slot(self, runner: RoleRunner, key: str, spec: ChildSpec | None) -> Slot:
        role = runner.spec
        name = f"{role.name}/{key}"
        slot = self.manager.new_slot(spec, restart=runner.restart_policy(key),
                                     backoff=RestartBackoff(initial=role.backoff.initial, maximum=role.backoff.max),
                                     start_retries=role.start_retries, name=name)
        self._slots[name] = _Owned(runner, key, slot)
        adopt = self.adoptions.pop(name, None)
        if adopt is not None:
            adopt(slot, spec)
        return slot

    # --- safety ----------------------------------------------------------------
    def lease_confirmed(self, t_k: float, ttl: int) -> None:
        """A keepalive sent at ``t_k`` came back alive with ``ttl``: move every
        slot's deadlines (each by its own stop_timeout), now and for new slots.
        An older ``t_k`` than one already applied is ignored (replies of
        keepalives in flight may be reported out of order)."""
        if self._confirmed is not None and t_k < self._confirmed[0] and ttl == self._confirmed[1]:
            return
        self._confirmed = (t_k, ttl)

        def deadlines(slot: Slot) -> tuple[float, float, float]:
            spec = slot.desired or (slot.child.spec if slot.child else None)
            stop_timeout = spec.stop_timeout if spec else 0.0
            return (timing.term_deadline(t_k, ttl, stop_timeout),
                    timing.kill_deadline(t_k, ttl, stop_timeout),
                    timing.start_deadline(t_k, ttl, stop_timeout))

        self.manager.set_lease_deadlines(rule=deadlines)

    # --- ticking ----------------------------------------------------------------
    def tick(self, now: float) -> list[SlotEvent]:
        self._report_lease_deadlines(now)
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

    def _report_lease_deadlines(self, now: float) -> None:
        """One warning per child and deadline kind when a lease deadline is
        due: which deadline, for which child, and how old the last confirmed
        keepalive is (an operator's first question after a spurious stop)."""
        if self._confirmed is None:
            return
        t_k, ttl = self._confirmed
        for name, owned in self._slots.items():
            self._report_held_start(name, owned, now, t_k, ttl)
            child = owned.slot.child
            if child is None or child.pid is None or not child.spec.lease_bound \
                    or owned.slot.state not in (SlotState.RUNNING, SlotState.STOPPING):
                continue
            term_at = timing.term_deadline(t_k, ttl, child.spec.stop_timeout)
            kill_at = timing.kill_deadline(t_k, ttl, child.spec.stop_timeout)
            kind = "kill" if now >= kill_at else "term" if now >= term_at else None
            if kind is None or (child.pid, kind) in self._reported:
                continue
            self._reported.add((child.pid, kind))
            signal_name = "SIGKILL" if kind == "kill" else signal.Signals(child.spec.stop_signal).name
            log.warning("%s: lease %s deadline reached (%s, role %s, pid %d): last confirmed keepalive "
                        "was sent %.2fs ago (ttl %ds, stop_timeout %gs)", child.spec.name, kind, signal_name,
                        owned.runner.name, child.pid, now - t_k, ttl, child.spec.stop_timeout)
        if len(self._reported) > 4096:  # pids of long-gone children
            self._reported.clear()

    def _report_held_start(self, name: str, owned: _Owned, now: float, t_k: float, ttl: int) -> None:
        """One warning when a lease-bound child is due to start but the newest
        confirmation is too old for it to outlive the next keepalive
        (``timing.start_deadline``): the round trip exceeds what the config tolerates."""
        spec = owned.slot.desired
        if owned.slot.child is not None or spec is None or not spec.lease_bound:
            self._held.discard(name)
            return
        held = timing.start_deadline(t_k, ttl, spec.stop_timeout) <= now < \
            timing.term_deadline(t_k, ttl, spec.stop_timeout) + ttl
        if held and name not in self._held:
            self._held.add(name)
            log.warning("%s: start held back: the last confirmed keepalive was sent %.2fs ago; round trips "
                        "to etcd seem longer than this config tolerates (%s)", spec.name, now - t_k,
                        timing.tolerance_line(ttl, spec.stop_timeout))

    def children(self) -> list[tuple[RoleRunner, str, Slot]]:
        return [(o.runner, o.key, o.slot) for o in self._slots.values()]


def _log_event(owned: _Owned, event: SlotEvent) -> None:
    who = owned.slot.child.spec.name if owned.slot.child else owned.slot.child_name
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


def _code(code: int | None) -> str:
    if code is None:
        return "no child"
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"status {code}"
