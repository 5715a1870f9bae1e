"""Drive the supervisor's decision loop turn by turn, without processes or threads.

The member is made by the real builder (:class:`~etcdvisor.runtime.build.Builder`:
runners, lease, member record, reconciler, roster, seed wiring, rollouts, barrier
gate, all wired as ``supervisor run`` wires them) and turned by the real
:class:`~etcdvisor.runtime.loop.Loop` (``dispatch``, ``_reconcile``), over the
memory backend with a :class:`FakeClock`; only the edges are left out (no watch,
campaign or keepalive thread: the test posts the facts and moves time), with two
stand-ins:

* a fake process manager whose slots "start" a child at the next tick and
  let the test make children exit (``exit(key, code)``);
* an effect queue: effects the turn produced are recorded, not run; the test
  runs them (``run_effects``), lets them fail, or leaves them hanging.

A tripwire backend makes every store call made *during a turn* an error, so
a runner that does I/O on the loop thread fails the test (Patroni's
``test_ha.py`` drives ``run_cycle()`` the same way).
"""

from __future__ import annotations

import itertools
import os
import tempfile
from dataclasses import dataclass, field
from types import SimpleNamespace

from etcdvisor.config.loader import load
from etcdvisor.coord.memory import FakeClock, MemoryBackend
from etcdvisor.coord.session import Session
from etcdvisor.events import Effect, EffectDone, RoleEvent
from etcdvisor.process.child import ChildState
from etcdvisor.process.slot import Exited, SlotState, Started, Stopped
from etcdvisor.runtime.build import Builder
from etcdvisor.runtime.loop import SUPERVISOR_LANE, Loop
from etcdvisor.runtime.rollouts import ROLLOUT_LANE
from etcdvisor.runtime.wiring import WIRING_LANE

MEMBER_LANES = (SUPERVISOR_LANE, WIRING_LANE, ROLLOUT_LANE)

_PIDS = itertools.count(40000)


class TurnTripwire(AssertionError):
    pass


class TripwireBackend:
    """Delegates to a backend, but refuses every call while a turn runs."""

    def __init__(self, inner):
        self._inner = inner
        self.in_turn = False

    def __getattr__(self, name):
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr

        def guarded(*args, **kwargs):
            if self.in_turn:
                raise TurnTripwire(f"backend.{name} called on the loop thread during a turn")
            return attr(*args, **kwargs)

        return guarded


@dataclass
class FakeChild:
    spec: object
    pid: int = field(default_factory=lambda: next(_PIDS))
    state: ChildState = ChildState.RUNNING
    started_at: float = 0.0

    @property
    def tag(self) -> str:
        return f"fake-{self.pid}"

    @property
    def alive(self) -> bool:
        return True


class FakeSlot:
    def __init__(self, name, spec):
        self.name = name
        self.desired = spec
        self.child: FakeChild | None = None
        self.restarts = 0
        self.restarts_by_reason: dict[str, int] = {}
        self.last_exit = None
        self.signals: list[int] = []
        self.restart_requested = False

    @property
    def state(self):
        return SlotState.RUNNING if self.child else SlotState.STOPPED

    @property
    def idle(self) -> bool:
        return self.child is None

    @property
    def child_name(self) -> str:
        spec = self.child.spec if self.child is not None else self.desired
        return spec.name if spec is not None else self.name

    def restart_child(self, now, reason="control") -> bool:
        """Stop the child and start it again with the same spec (at the next tick)."""
        if self.child is None:
            return False
        self.restart_requested = True
        return True

    def set_desired(self, spec) -> None:
        if spec is not None and self.child is not None and spec != self.child.spec:
            self.restarts += 1
        self.desired = spec


class FakeManager:
    watchdog = None  # no helper process

    def __init__(self):
        self.slots: dict[str, FakeSlot] = {}
        self.exits: list[tuple[str, int]] = []
        self.deadline_rule = None

    def start(self) -> None:
        pass

    def close(self) -> None:
        pass

    def new_slot(self, spec, restart="always", backoff=None, start_retries=None, name=""):
        slot = FakeSlot(name, spec)
        self.slots[name] = slot
        return slot

    def remove_slot(self, slot) -> None:
        self.slots.pop(slot.name, None)

    def set_lease_deadlines(self, term_at=None, kill_at=None, *, rule=None) -> None:
        self.deadline_rule = rule

    def next_deadline(self):
        return None

    def tick(self, now):
        events = []
        for name, code in self.exits:
            slot = self.slots.get(name)
            if slot is not None and slot.child is not None:
                slot.child, slot.last_exit = None, code
                events.append(Exited(name, code, 1.0, None))
                slot.desired = None if code == 0 or True else slot.desired
        self.exits.clear()
        for name, slot in self.slots.items():
            if slot.desired is None and slot.child is not None:
                slot.child = None
                events.append(Stopped(name, -15))
            elif slot.child is not None and slot.restart_requested:
                slot.restart_requested = False
                slot.child = FakeChild(slot.desired)  # restarted: stop then start
                events += [Stopped(name, -15), Started(name, slot.child.pid)]
            elif slot.desired is not None and slot.child is not None and slot.child.spec != slot.desired:
                slot.child = FakeChild(slot.desired)  # replaced: stop then start
                events += [Stopped(name, -15), Started(name, slot.child.pid)]
            elif slot.desired is not None and slot.child is None and slot.last_exit is None:
                slot.child = FakeChild(slot.desired)
                events.append(Started(name, slot.child.pid))
        return events


class HarnessBuilder(Builder):
    """The real builder with the harness's fakes: its backend (no connect), a lease
    granted on the fake clock without a keepalive thread, the fake process layer, the
    harness's inbox and effect queue. Commands are not checked: nothing is spawned."""

    def __init__(self, config, harness: LoopHarness):
        super().__init__(config, environ={"PATH": "/usr/bin:/bin"}, clock=harness.clock,
                         process_layer=lambda: harness.manager, inbox=SimpleNamespace(put=harness.post),
                         effects=SimpleNamespace(submit=harness.effects.append, drain=lambda timeout: True,
                                                 close=lambda: None, pending=lambda: 0))
        self.harness = harness

    def check_commands(self) -> None:
        pass

    def connect(self) -> str:
        self.backend = self.harness.backend
        return "memory://"

    def open_session(self, session: Session) -> Session:
        lease = Session(self.harness.store, self.config.member.ttl, clock=self.harness.clock,
                        name=self.config.member.id)
        lease._grant()  # alive, no keepalive thread: the test moves time
        return lease


class LoopHarness:
    """One member's loop. ``config_text``: a YAML config (commands need not
    exist: nothing is spawned)."""

    def __init__(self, config_text: str, *, member: str = "m1", backend=None, clock=None):
        self.clock = clock or FakeClock()
        self.store = backend or MemoryBackend(clock=self.clock)
        self.backend = TripwireBackend(self.store)
        fd, path = tempfile.mkstemp(suffix=".yaml")
        with os.fdopen(fd, "w") as fh:
            fh.write(config_text)
        try:
            self.config = load(path, {}, default_member_id=member)
        finally:
            os.unlink(path)
        self.effects: list[Effect] = []
        self.inbox: list = []
        self.manager = FakeManager()
        self.builder = HarnessBuilder(self.config, self)
        parts = self.builder.join()
        self.session = parts.session
        self.sup = Loop(parts)
        for runner in parts.built:
            self.sup.roster.add_started(runner)  # no coordination threads: facts come from the test

    # --- facts in ---------------------------------------------------------------
    def post(self, event) -> None:
        self.inbox.append(event)

    def tell(self, role: str, payload) -> None:
        runner = self.sup.runners[role]
        self.inbox.append(RoleEvent(role, payload, self.clock(), source=runner.serial))

    def tell_plan(self, role: str, info) -> None:
        """A sharded role's published plan putting this member at ``info``'s place
        (``Info(index, count, epoch[, members])``; members not named are ``peer<i>``),
        and the sequence's word that this member joined before it (first if index 0)."""
        from etcdvisor.recipes.sequence import Place
        from etcdvisor.roles.shard_plan import Published

        me = self.config.member.id
        members = info.members or tuple(me if i == info.index else f"peer{i}" for i in range(info.count))
        self.tell(role, Place(head=info.index == 0, joined=info.epoch))
        self.tell(role, Published(info.epoch, tuple(members)))

    def exit(self, role: str, key: str, code: int) -> None:
        self.manager.exits.append((f"{role}/{key}", code))

    # --- one turn ------------------------------------------------------------------
    def turn(self) -> dict[str, dict]:
        """Dispatch the inbox, reconcile, collect effects; return what runs
        now (role -> slot key -> spec)."""
        events, self.inbox = self.inbox, []
        self.backend.in_turn = True
        try:
            for event in events:
                self.sup.dispatch(event)
            self.sup._reconcile(self.clock())
            self.sup.roster.flush_effects()
        finally:
            self.backend.in_turn = False
        return self.running()

    def running(self) -> dict[str, dict]:
        out: dict[str, dict] = {}
        for runner, key, slot in self.sup.reconciler.children():
            if slot.child is not None:
                out.setdefault(runner.name, {})[key] = slot.child.spec
        return out

    def effect_names(self) -> list[str]:
        """Effects roles queued (the member's own, e.g. its record, its wiring's and
        rollouts' writes, left out)."""
        return [e.what for e in self.effects if e.role not in MEMBER_LANES]

    def member_effect_names(self) -> list[str]:
        return [e.what for e in self.effects if e.role == SUPERVISOR_LANE]

    def run_effects(self, *, fail: Exception | None = None, only: str | None = None) -> None:
        """Run queued effects now (off the turn), or make them fail with
        ``fail``; outcomes go to the inbox as the EffectRunner would post them."""
        keep = []
        for effect in self.effects:
            if only is not None and only not in effect.what:
                keep.append(effect)
                continue
            if fail is not None:
                outcome = EffectDone(effect, None, fail)
            else:
                try:
                    outcome = EffectDone(effect, effect.call())
                except Exception as exc:  # noqa: BLE001 - as the EffectRunner reports it
                    outcome = EffectDone(effect, None, exc)
            self.inbox.append(RoleEvent(effect.role, outcome, self.clock(), source=effect.serial))
        self.effects[:] = keep
