"""Rolling restarts on the decision loop (issue 15, section 3).

Every restart that concerns more than one child of a sharded or singleton role --
``supervisor restart ROLE`` and a change of a ``config:`` item with ``on_change:
restart`` -- runs as a *rollout* recorded in etcd (:mod:`.rollout_store`). Each member
restarts only its own children, and only one that holds an unavailability slot:

    pending --slot taken (txn)--> held: restart / new config values
    held    --replacement ready for rollout.min_ready--> released, listed in ``done``
    held    --not ready within rollout.deadline--> the rollout is marked failed (the slot
              stays held until the child is ready: it is one of the unavailable children)

The number of slots a member may try is ``max_unavailable`` minus the children of the
role that are unready for any other reason (read from the member records of the other
members and from this member's own slots), and the slot keys live on the holder's lease,
so at most ``max_unavailable`` children are down at once and a dead member's slots go
with its lease. A rollout is ``done`` once every member that runs the role reports
(in its member record, ``roles.<role>.rollout``) nothing pending for its id and no slot
is held; any member may record that.

A second trigger supersedes a running rollout: restart rollouts mark the children that
run when the member first sees the record (a child started later is new already);
config rollouts restart the children whose restart values differ from the current ones,
and only once the values have not changed for ``CONFIG_SETTLE`` (a storm of writes
ends as one restart per child, with the last value).

Loop contract: ``handle(event)`` for :class:`RolloutsChanged` / :class:`MembersChanged`;
``observe(role, event)`` for every slot event; ``tick(now)`` once per turn after the
reconcile; ``status(role, now)`` for the member record; ``next_deadline()``. All store
I/O is queued with ``effect`` and comes back on the loop.
"""

from __future__ import annotations

import functools
import logging
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..config import Config, RoleSpec
from ..config.model import RoleType
from ..coord.base import Backend
from ..coord.keys import ClusterKeys
from ..coord.retry import STORE_RETRY
from ..process.slot import Slot, SlotEvent, SlotState, Started
from ..roles.base import RoleRunner
from . import rollout_store as store
from .role_config import QueueEffect
from .rollout_watch import MembersChanged, RolloutsChanged, others_unready

log = logging.getLogger("etcdvisor")

ROLLOUT_LANE = "(rollouts)"  # effect lane of the rollout records and slots
ORPHAN_GRACE = 5.0  # a slot of ours that no hold knows is released after this (a lost reply)
SILENT_GRACE = 15.0  # s: a member that never reports rollouts (an older version) is not waited for
CONFIG_SETTLE = 1.0  # seconds a changed config must stay unchanged before children restart
ROLLOUT_TYPES = (RoleType.SHARDED, RoleType.SINGLETON)


def rollout_min_ready(role: RoleSpec) -> float:
    """How long a replacement must stay ready before its slot is released."""
    return role.rollout.min_ready if role.rollout.min_ready is not None else role.min_ready


@dataclass
class Hold:
    """One slot this member holds for one of its children."""

    number: int
    child: str  # member:key
    key: str
    rollout: str
    acquired_at: float
    restarted: bool = False
    failed_reported: bool = False
    releasing: bool = False


@dataclass
class _RoleState:
    record: store.RolloutRecord | None = None
    seen_id: str | None = None  # the record whose children we marked
    marked: set[str] = field(default_factory=set)  # slot keys to restart for seen_id
    holds: dict[str, Hold] = field(default_factory=dict)  # slot key -> hold
    acquiring: bool = False
    writing: str | None = None  # config target being written
    finishing: str | None = None  # rollout id being finished
    digest: str | None = None  # restart values of the config seen last
    changed_at: float | None = None  # when ``digest`` last changed
    pending: int = 0
    released: dict[int, float] = field(default_factory=dict)  # slot number -> when we let it go


class ConfigGate(Protocol):
    """What the rollout asks of the role config (``RoleConfig`` implements it)."""

    def restart_digest(self, role: RoleSpec) -> str | None: ...
    def outdated(self, role: RoleSpec, name: str) -> bool: ...
    def admit(self, role: RoleSpec, name: str) -> None: ...


class Rollouts:
    def __init__(self, config: Config, backend: Backend, keys: ClusterKeys, member_id: str,
                 effect: QueueEffect, children: Callable[[], Iterable[tuple[RoleRunner, str, Slot]]],
                 lease: Callable[[], int], clock: Callable[[], float], wall: Callable[[], float],
                 ready_since: Callable[[str, float], float | None]):
        """``ready_since(slot name, now)``: since when the slot's child is ready (None:
        not ready), from :class:`~.readiness.Readiness`."""
        self.config = config
        self.backend = backend
        self.keys = keys
        self.member_id = member_id
        self.effect = effect
        self.children = children
        self.lease = lease
        self.clock = clock
        self.wall = wall
        self.ready_since = ready_since
        self.gate: ConfigGate | None = None
        self.view = store.RolloutView({}, {})
        self.members: Mapping[str, Mapping[str, Any]] = {}
        self.members_known = False  # members/ is watched and its first snapshot came
        self.roles: dict[str, _RoleState] = {}
        self._deadline: float | None = None
        self.record_wanted = False  # a slot waits for our member record to show its child ready
        self.retry_at: float | None = None  # a failed write: a turn is due then

    # --- facts ---------------------------------------------------------------------------
    def handle(self, event: object) -> None:
        if isinstance(event, RolloutsChanged):
            self.view = event.view
        elif isinstance(event, MembersChanged):
            self.members, self.members_known = event.roles, event.known

    def observe(self, role: str, event: SlotEvent) -> None:
        if isinstance(event, Started):
            state = self.roles.get(role)
            if state is not None:
                key = event.slot.partition("/")[2]
                state.marked.discard(key)  # started after we saw the rollout: new already
                hold = state.holds.get(key)
                if hold is not None:
                    hold.restarted = True

    def ready(self, slot: Slot, now: float) -> bool:
        return self.ready_since(slot.name, now) is not None

    # --- the turn ------------------------------------------------------------------------
    def tick(self, now: float) -> None:
        self._deadline = None
        self.record_wanted = False
        if self.retry_at is not None:
            if self.retry_at <= now:
                self.retry_at = None
            else:
                self._wake(self.retry_at, now)
        mine: dict[str, list[tuple[str, Slot]]] = {}
        for runner, key, slot in self.children():
            mine.setdefault(runner.name, []).append((key, slot))
        for name, role in self.config.roles.items():
            if role.type not in ROLLOUT_TYPES:
                continue
            self._role_turn(role, self.roles.setdefault(name, _RoleState()), mine.get(name, []), now)

    def _wake(self, at: float, now: float) -> None:
        if at > now and (self._deadline is None or at < self._deadline):
            self._deadline = at

    def next_deadline(self) -> float | None:
        return self._deadline

    def _retry_soon(self) -> None:
        at = self.clock() + STORE_RETRY.delay(1)
        self.retry_at = at if self.retry_at is None else min(self.retry_at, at)

    def _role_turn(self, role: RoleSpec, state: _RoleState, mine: list[tuple[str, Slot]], now: float) -> None:
        record = self.view.records.get(role.name)
        if record is not None and state.record is not None and record.id == state.record.id \
                and state.record.state == store.FAILED and record.state == store.RUNNING:
            for hold in state.holds.values():  # resumed: the deadline starts again
                hold.acquired_at, hold.failed_reported = now, False
        state.record = record
        slots = {key: slot for key, slot in mine}
        if record is not None and record.id != state.seen_id:
            state.seen_id = record.id
            state.marked = set()
            if record.trigger == "restart" and record.state == store.RUNNING:
                state.marked = {key for key, slot in mine if slot.child is not None}
                log.info("role %s: rollout %s (restart by %s): %d children here to restart", role.name,
                         record.id, record.who, len(state.marked), extra={"role": role.name})
        state.marked &= set(slots)
        outdated = self._outdated(role, state, mine, now)
        self._progress_holds(role, state, slots, now)
        self._release_orphans(role, state, now)
        pending = [k for k in sorted(state.marked | outdated, key=_natural) if k not in state.holds]
        state.pending = len(pending)
        if record is None or record.state == store.ABORTED:
            return
        may_restart = record.state == store.RUNNING or (record.state == store.DONE and not state.marked)
        if pending and may_restart and not state.acquiring:
            self._acquire(role, state, pending, slots, now)
        if record.state == store.RUNNING and not pending and not state.holds:
            if not self._reported_idle(role.name, record.id):
                self.record_wanted = True  # the others wait for our report to call it done
            self._maybe_finish(role, state, record)

    # --- config changes ------------------------------------------------------------------
    def _outdated(self, role: RoleSpec, state: _RoleState, mine: list[tuple[str, Slot]], now: float) -> set[str]:
        """Keys of running children whose restart values are not the current ones (once
        the values have settled); children not running take the new values at once."""
        gate = self.gate
        digest = gate.restart_digest(role) if gate is not None else None
        if gate is None or digest is None:
            return set()
        if digest != state.digest:
            if state.digest is not None:
                state.changed_at = now
            state.digest = digest
        settled_at = (state.changed_at or 0.0) + CONFIG_SETTLE
        outdated = set()
        for key, slot in mine:
            name = _child_name(slot)
            if name is None or not gate.outdated(role, name):
                continue
            if slot.child is None or slot.state is not SlotState.RUNNING:
                gate.admit(role, name)  # down anyway: it starts with the new values
            elif key not in state.holds:
                outdated.add(key)
        if not outdated:
            return outdated
        if now < settled_at:
            self._wake(settled_at, now)
            return set()
        record = state.record
        target = f"config:{digest}"
        if (record is None or record.target != target) and state.writing != target:
            self._start_config(role, state, target)
            return set()  # restart once the record says so
        if record is not None and record.target == target and record.state in (store.FAILED, store.ABORTED):
            return set()
        return outdated

    def _start_config(self, role: RoleSpec, state: _RoleState, target: str) -> None:
        state.writing = target
        names = self.config.roles[role.name].config
        record = store.new_record(role.name, "config", f"config change on member {self.member_id} "
                                  f"({', '.join(sorted(names))})", target, now=self.wall())
        log.info("role %s: config changed: rolling restart (%s)", role.name, role.rollout,
                 extra={"role": role.name})

        def done(_result: object, error: BaseException | None) -> None:
            if state.writing == target:
                state.writing = None
            if error is not None:
                log.warning("role %s: cannot record the config rollout: %s", role.name, error)
                self._retry_soon()

        self.effect(f"start the config rollout of {role.name}",
                    lambda: store.start(self.backend, self.keys, record, unless_target=True), done)

    # --- slots ---------------------------------------------------------------------------
    def _budget(self, role: RoleSpec, state: _RoleState, slots: Mapping[str, Slot], now: float) -> tuple[int, int]:
        """(max_unavailable, children unready without holding a slot), cluster-wide."""
        holders = {h.child for h in self.view.slots.get(role.name, ())}
        total, unready = others_unready(self.members, self.member_id, role.name, holders)
        for key, slot in slots.items():
            total += 1
            if not self.ready(slot, now) and key not in state.holds:
                unready += 1
        return role.rollout.limit(total), unready

    def _acquire(self, role: RoleSpec, state: _RoleState, pending: list[str], slots: Mapping[str, Slot],
                 now: float) -> None:
        if not self.members_known:
            return  # the budget needs the others' records: their watch's snapshot comes next
        limit, unready = self._budget(role, state, slots, now)
        # A child of ours that is already unready (crashed, failing its readiness probe) goes
        # first, and restarting it costs no availability: its slot replaces its count in
        # ``unready`` (as Kubernetes replaces unhealthy old pods first). Without this a
        # rollout could never start while max_unavailable children are unready.
        stuck = [key for key in pending if key in slots and not self.ready(slots[key], now)]
        pending = stuck + [key for key in pending if key not in stuck]
        held = {h.number for h in self.view.slots.get(role.name, ())} | \
            {h.number for h in state.holds.values()}
        numbers = [n for n in range(max(0, min(limit, limit - unready + len(stuck)))) if n not in held]
        if not numbers:
            return
        turn = zlib.crc32(self.member_id.encode()) % len(numbers)
        numbers = numbers[turn:] + numbers[:turn]  # members start at different slots: fewer lost races
        record = state.record
        assert record is not None
        wanted = [(f"{self.member_id}:{key}", record.id) for key in pending[:len(numbers)]]
        lease = self.lease()
        state.acquiring = True

        def done(result: list[tuple[int, str]] | None, error: BaseException | None) -> None:
            state.acquiring = False
            if error is not None:
                log.warning("role %s: cannot take a rollout slot: %s", role.name, error)
                self._retry_soon()
                return
            for number, child in result or []:
                key = child.partition(":")[2]
                current = self.view.records.get(role.name)  # the freshest we know
                if current is None or current.state in (store.FAILED, store.ABORTED):
                    # stopped meanwhile: restart no more children, give the slot back
                    hold = Hold(number, child, key, record.id, self.clock(), restarted=True)
                    state.holds[key] = hold
                    self._release(role, state, hold, done=False)
                    continue
                self._restart(role, state, number, key, record.id)

        self.effect(f"take rollout slots of {role.name}",
                    lambda: store.acquire(self.backend, self.keys, role.name, numbers, len(wanted), wanted, lease),
                    done)

    def _restart(self, role: RoleSpec, state: _RoleState, number: int, key: str, rollout_id: str) -> None:
        """On the loop: slot ``number`` is ours; restart child ``key`` now."""
        now = self.clock()
        slot = next((s for r, k, s in self.children() if r.name == role.name and k == key), None)
        hold = Hold(number, f"{self.member_id}:{key}", key, rollout_id, now)
        state.holds[key] = hold
        state.marked.discard(key)
        name = _child_name(slot) if slot is not None else None
        if slot is None or name is None or slot.child is None:
            hold.restarted = True  # nothing runs: the hold ends once it is ready (or goes)
            return
        gate = self.gate
        new_config = gate is not None and gate.outdated(role, name)
        if slot.restart_child(now, "rollout"):
            if gate is not None:
                gate.admit(role, name)  # it starts again with the current values
            log.info("%s: restarting%s (rollout %s, slot %d)", name, " with the new config" if new_config else "",
                     rollout_id, number, extra={"role": role.name})
        else:
            hold.restarted = True

    def _progress_holds(self, role: RoleSpec, state: _RoleState, slots: Mapping[str, Slot], now: float) -> None:
        record = state.record
        for key, hold in list(state.holds.items()):
            if hold.releasing:
                continue
            slot = slots.get(key)
            aborted = record is None or record.state == store.ABORTED
            if slot is None or aborted:
                self._release(role, state, hold, done=False)
                continue
            since = self.ready_since(slot.name, now) if hold.restarted else None
            if since is not None:
                release_at = since + rollout_min_ready(role)
                # and only once our member record says so: others count unready children from it
                if now >= release_at and self._published_ready(role.name, key):
                    self._release(role, state, hold, done=True)
                    continue
                if now >= release_at:
                    self.record_wanted = True  # write it now, not after the record's rate limit
                self._wake(release_at, now)
                continue
            fail_at = hold.acquired_at + role.rollout.deadline
            # (the current rollout fails, also when it superseded the one the child restarted for)
            if record is not None and record.state == store.RUNNING and not hold.failed_reported:
                if now >= fail_at:
                    hold.failed_reported = True
                    self._fail(role, hold, record.id, f"{hold.child} not ready within "
                                                      f"{role.rollout.deadline:g}s of its restart")
                else:
                    self._wake(fail_at, now)

    def _reported_idle(self, role: str, rollout_id: str) -> bool:
        """Our member record, as the watch last saw it, reports nothing left of ``rollout_id``."""
        report = (self.members.get(self.member_id, {}).get(role) or {}).get("rollout")
        return isinstance(report, Mapping) and report.get("id") == rollout_id and \
            report.get("pending") == 0 and report.get("holding") == 0

    def _published_ready(self, role: str, key: str) -> bool:
        """Our member record, as the watch last saw it, shows child ``key`` ready."""
        children = (self.members.get(self.member_id, {}).get(role) or {}).get("children") or {}
        entry = children.get(key) if isinstance(children, Mapping) else None
        return isinstance(entry, Mapping) and entry.get("ready") is True

    def _release(self, role: RoleSpec, state: _RoleState, hold: Hold, *, done: bool) -> None:
        hold.releasing = True
        lease = self.lease()
        record = state.record
        # listed in the current rollout unless that one still wants it restarted (it was
        # restarted for a rollout the current one superseded)
        mark = done and record is not None and record.state in (store.RUNNING, store.FAILED) and \
            hold.key not in state.marked
        rollout_id = record.id if record is not None else hold.rollout

        def call() -> None:
            if mark:
                try:
                    store.mark_done(self.backend, self.keys, role.name, rollout_id, [hold.child])
                except Exception as exc:  # noqa: BLE001 - progress display only: the slot goes anyway
                    log.warning("role %s: cannot list %s as done in rollout %s: %s", role.name, hold.child,
                                rollout_id, exc)
            store.release(self.backend, self.keys, role.name, hold.number, lease)

        def finished(_result: object, error: BaseException | None) -> None:
            if error is not None:
                log.warning("role %s: cannot release rollout slot %d: %s", role.name, hold.number, error)
                hold.releasing = False
                self._retry_soon()
                return
            state.released[hold.number] = self.clock()
            if state.holds.get(hold.key) is hold:
                del state.holds[hold.key]

        if done:
            log.info("role %s: %s ready: releasing rollout slot %d", role.name, hold.child, hold.number,
                     extra={"role": role.name})
        self.effect(f"release rollout slot {hold.number} of {role.name}", call, finished)

    def _fail(self, role: RoleSpec, hold: Hold, rollout_id: str, reason: str) -> None:
        log.error("role %s: rollout %s failed: %s; no more children are restarted", role.name, rollout_id,
                  reason, extra={"role": role.name})
        def done(_result: object, error: BaseException | None) -> None:
            if error is not None:
                log.warning("role %s: cannot record the failed rollout: %s", role.name, error)
                hold.failed_reported = False
                self._retry_soon()

        self.effect(f"mark rollout {rollout_id} of {role.name} failed",
                    lambda: store.mark_failed(self.backend, self.keys, role.name, rollout_id, hold.child,
                                              self.member_id, reason), done)

    def _maybe_finish(self, role: RoleSpec, state: _RoleState, record: store.RolloutRecord) -> None:
        if state.finishing == record.id or self.view.slots.get(role.name) or not self.members_known:
            return
        for member, roles in self.members.items():
            if member == self.member_id or role.name not in roles:
                continue
            status = roles.get(role.name) or {}
            if isinstance(status, Mapping) and "rollout" not in status and \
                    self.wall() - record.started > SILENT_GRACE:
                continue  # a member of a version without rollouts: nothing to wait for
            report = status.get("rollout") if isinstance(status, Mapping) else None
            if not isinstance(report, Mapping) or report.get("id") != record.id or \
                    report.get("pending") != 0 or report.get("holding") != 0:
                return
        state.finishing = record.id
        log.info("role %s: rollout %s done (%d children restarted)", role.name, record.id, len(record.done),
                 extra={"role": role.name})
        def done(_result: object, error: BaseException | None) -> None:
            if error is not None:
                log.warning("role %s: cannot record the finished rollout: %s", role.name, error)
                if state.finishing == record.id:
                    state.finishing = None
                self._retry_soon()

        self.effect(f"finish rollout {record.id} of {role.name}",
                    lambda: store.finish(self.backend, self.keys, role.name, record.id), done)

    def _release_orphans(self, role: RoleSpec, state: _RoleState, now: float) -> None:
        """Free slots on our lease that no hold knows (a take whose reply was lost)."""
        if state.acquiring:
            return
        lease = self.lease()
        known = {h.number for h in state.holds.values()}
        for number, when in list(state.released.items()):
            if now - when > ORPHAN_GRACE:
                del state.released[number]
        for slot in self.view.slots.get(role.name, ()):
            if slot.lease != lease or slot.number in known or slot.number in state.released:
                continue
            log.warning("role %s: rollout slot %d is ours but no child holds it: releasing it", role.name,
                        slot.number, extra={"role": role.name})
            state.released[slot.number] = now
            self.effect(f"release rollout slot {slot.number} of {role.name}",
                        functools.partial(store.release, self.backend, self.keys, role.name, slot.number, lease),
                        None)

    # --- status --------------------------------------------------------------------------
    def status(self, role: str) -> dict[str, Any] | None:
        """What the member record says of the role's rollout (None: never had one)."""
        state = self.roles.get(role)
        if state is None or state.record is None:
            return None
        record = state.record
        out: dict[str, Any] = {"id": record.id, "state": record.state, "trigger": record.trigger,
                               "pending": state.pending, "holding": len(state.holds),
                               "restarted": len(record.done)}
        if record.failed is not None:
            out["failed"] = record.failed.reason
        return out

    def record(self, role: str) -> store.RolloutRecord | None:
        return self.view.records.get(role)


def _child_name(slot: Slot | None) -> str | None:
    if slot is None:
        return None
    spec = slot.child.spec if slot.child is not None else slot.desired
    return spec.name if spec is not None else None


def _natural(key: str) -> tuple[int, str]:
    digits = "".join(c for c in key if c.isdigit())
    return (int(digits) if digits else -1, key)
