"""``ProcessManager``: slots, the output pump, the watchdog and the reaper, for the loop.

The decision loop owns one manager and calls, from its single long-lived thread:

- ``start()`` once (starts the output thread and the watchdog helper; with
  ``subreaper=True`` also becomes a child subreaper);
- ``new_slot(...)`` / ``remove_slot(slot)`` as roles come and go, ``slot.set_desired``;
- ``set_lease_deadlines(term_at, kill_at)`` (or ``rule=``, deadlines per slot) after each
  keepalive (lease-bound children);
- ``tick(now)`` whenever ``now >= next_deadline()``, after any ``set_desired``, and on
  every SIGCHLD. SIGCHLD handling is the loop's job: a handler (or
  ``signal.set_wakeup_fd``) that only puts an event on the inbox is enough; the manager
  finds out what exited by polling without blocking;
- ``stop_all(now)`` at shutdown, then ``tick`` until ``all_stopped()``, then ``close()``.

Guarantees: every call returns promptly (no waits on children); every child gets its own
stop_timeout and all are stopped in parallel; every child is registered with the
watchdog while alive; orphans are reaped (when a reaper is enabled) without stealing
statuses of slot children, the watchdog helper, or pids given to ``protect_pid``.
Everything a child spawned is tracked (``tracking.TreeTracker``: marker, lineage, and a
cgroup per child when ``cgroups`` is on and the machine allows it; by default on for a
subreaper); ``tick`` runs the tracker's census, which kills escapees of exited children.

Cost per ``tick``: slots without a child are skipped unless due; known-pid lookups are a
set membership test.

Not thread-safe: call everything from the loop thread (spawn's parent-death signal
is tied to that thread, see ``spawn``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import BinaryIO

from etcdvisor.process.backoff import RestartBackoff
from etcdvisor.process.cgroup import CgroupPool
from etcdvisor.process.layer import ChildFactory
from etcdvisor.process.output import OutputPump
from etcdvisor.process.reaper import Reaper, become_subreaper
from etcdvisor.process.slot import RestartPolicy, Slot, SlotEvent
from etcdvisor.process.spawn import ChildSpec
from etcdvisor.process.tracking import TreeTracker
from etcdvisor.process.watchdog import Watchdog

START_BUDGET = 0.1
"""Seconds one ``tick`` may spend ticking idle slots (starting children), after the first."""


def _no_deadlines(_slot: Slot) -> tuple[None, None]:
    return None, None


class ProcessManager:
    """Holds the slots and the shared machinery they use."""

    def __init__(self, *, capture_output: bool = True, use_watchdog: bool = True,
                 reap_orphans: bool | None = None, subreaper: bool = False,
                 cgroups: bool | None = None,
                 stdout: BinaryIO | None = None, stderr: BinaryIO | None = None,
                 child_factory: ChildFactory | None = None):
        """``child_factory``: how each slot makes a run (default: real processes;
        see ``process/layer.py``; the fleet simulator passes records)."""
        self.child_factory = child_factory
        self.output = OutputPump(stdout, stderr) if capture_output else None
        self.watchdog = Watchdog(batched=True) if use_watchdog else None
        self._subreaper = subreaper
        self._use_cgroups = subreaper if cgroups is None else cgroups
        self.tracker = TreeTracker(self._is_known_pid, subreaper=subreaper)
        if reap_orphans is None:
            reap_orphans = subreaper or os.getpid() == 1
        self.reaper = Reaper(self._is_known_pid) if reap_orphans else None
        self._slots: dict[Slot, None] = {}  # insertion-ordered set
        self._known: set[int] = set()        # pids of slot children, rebuilt on a miss
        self._protected: set[int] = set()
        self._lease_rule: Callable[[Slot], tuple[float | None, ...]] = _no_deadlines

    def start(self) -> None:
        if self._subreaper:
            become_subreaper()
        if self._use_cgroups and self.tracker.cgroups is None:
            self.tracker.cgroups = CgroupPool.create()
        if self.output is not None:
            self.output.start()
        if self.watchdog is not None:
            cgroups = self.tracker.cgroups
            self.watchdog.start(cgroup_base=cgroups.base if cgroups is not None else None)

    def close(self) -> None:
        """Stop the watchdog helper (killing nothing) and the output thread.

        Call after ``all_stopped()``; children still alive are left to the caller.
        """
        if self.watchdog is not None:
            self.watchdog.stop()
        if self.tracker.cgroups is not None:
            self.tracker.cgroups.close()
            self.tracker.cgroups = None
        if self.output is not None:
            self.output.stop()

    # -- slots -------------------------------------------------------------------

    def new_slot(self, spec: ChildSpec | None, restart: RestartPolicy | str = RestartPolicy.ALWAYS,
                 backoff: RestartBackoff | None = None, start_retries: int = 3,
                 on_event: Callable[[SlotEvent], None] | None = None, *,
                 name: str | None = None) -> Slot:
        slot = Slot(spec, restart, backoff, start_retries, on_event, name=name,
                    output=self.output, watchdog=self.watchdog, tracker=self.tracker,
                    child_factory=self.child_factory)
        slot.set_lease_deadlines(*self._lease_rule(slot))
        self._slots[slot] = None
        return slot

    def remove_slot(self, slot: Slot) -> None:
        """Drop an idle slot (``slot.idle``); raises ValueError if its child is alive."""
        if not slot.idle:
            raise ValueError(f"{slot.name}: cannot remove a slot whose child is alive")
        del self._slots[slot]

    @property
    def slots(self) -> tuple[Slot, ...]:
        return tuple(self._slots)

    # -- lease, pids ---------------------------------------------------------------

    def set_lease_deadlines(self, term_at: float | None = None, kill_at: float | None = None, *,
                            rule: Callable[[Slot], tuple[float | None, ...]] | None = None) -> None:
        """Apply lease deadlines to every lease-bound child; one write to the watchdog.

        ``rule(slot) -> (term_at, kill_at)`` gives each slot its own deadlines
        (they depend on its stop_timeout); it also applies to slots created later."""
        self._lease_rule = rule or (lambda _slot: (term_at, kill_at))
        guard = []
        for slot in self._slots:
            slot.set_lease_deadlines(*self._lease_rule(slot))
            child = slot.child
            if child is not None and child.alive and child.spec.lease_bound \
                    and child.pgid is not None:
                guard.append((child.pgid, *child.guard_deadlines()))
        if self.watchdog is not None and guard:
            self.watchdog.extend_many(guard)

    def protect_pid(self, pid: int) -> None:
        """Never let the reaper take ``pid`` (a child started outside this package)."""
        self._protected.add(pid)

    def unprotect_pid(self, pid: int) -> None:
        self._protected.discard(pid)

    def _is_known_pid(self, pid: int) -> bool:
        if pid in self._protected:
            return True
        if self.watchdog is not None and pid == self.watchdog.pid:
            return True
        if pid not in self._known:
            self._known = {slot.child.pid for slot in self._slots
                           if slot.child is not None and slot.child.pid is not None}
        return pid in self._known

    # -- the tick --------------------------------------------------------------------

    def tick(self, now: float) -> list[SlotEvent]:
        """Tick every slot, reap orphans, keep the watchdog alive; return slot events.

        Starting children is bounded per tick (``START_BUDGET`` seconds, at least one
        start): a slot left due keeps ``next_deadline()`` at 0.0, so the loop turns
        again at once, and keepalive confirmations are handled between batches. (1,024
        children started in one tick took 15 s on a loaded host, past the lease
        deadlines the loop had not been able to move: every child was then killed.)"""
        events: list[SlotEvent] = []
        budget_end: float | None = None
        for slot in list(self._slots):
            if slot.child is None:
                due = slot.next_deadline()
                if due is None or due > now:
                    continue  # idle: ticking it would change nothing
                if budget_end is not None and time.monotonic() >= budget_end:
                    continue  # still due: the next tick, after the loop has turned
                if budget_end is None:
                    budget_end = time.monotonic() + START_BUDGET
            events.extend(slot.tick(now))
        if self.reaper is not None:
            self.reaper.reap()
        self.tracker.census(now)
        if self.watchdog is not None:
            self.watchdog.ensure_running()
            self.watchdog.flush()
        return events

    def next_deadline(self) -> float | None:
        """The earliest slot deadline (0.0 = tick now), or None (wait for events/SIGCHLD)."""
        deadlines = [d for d in (slot.next_deadline() for slot in self._slots) if d is not None]
        census = self.tracker.next_census()
        if census is not None:
            deadlines.append(census)
        return min(deadlines) if deadlines else None

    def stop_all(self, now: float) -> list[SlotEvent]:
        """Stop every child in parallel, each with its own stop_timeout."""
        for slot in self._slots:
            slot.set_desired(None)
        return self.tick(now)

    def all_stopped(self) -> bool:
        return all(slot.child is None for slot in self._slots)
