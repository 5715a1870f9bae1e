"""``type: singleton``: the role's child runs only on its elected leader.

One election per role (``roles/<role>/election/``). A campaign thread blocks
in :meth:`Election.campaign`, which returns only after the win was confirmed
by a keepalive sent after it (docs/safety.md, rule 2); the loop then starts the child
with ``LEADER=1`` and ``LEADER_TOKEN`` (the fencing token, strictly
increasing across leaders). A :class:`LeadershipWatch` reports at once when
the leader key disappears or the session lease expires/is lost; the child is
then stopped and the member campaigns again.

``standby: true`` also runs the child on followers with ``LEADER=0`` and
``LEADER_MEMBER`` naming the current leader, restarting it when leadership
changes (Patroni's primary/replica pattern). Followers' children do not
depend on the lease. A standby child starts only once another member is seen
leading (or after ``STANDBY_HOLD`` with no other leader seen): a member that
is about to win does not start a standby child only to replace it with the
leader child a few milliseconds later.

States: CAMPAIGNING -> LEADER -> (DEPOSED -> CAMPAIGNING)*, any -> FAILED
(crash loop: resigned, stops campaigning), any -> STOPPED.

Stepping down (``step_down_after``, singleton; a run that failed liveness, cron and
job): LEADER -> (stepping down: ``leading`` is False, so the children stop) ->
FOLLOWER once no child is alive: then it resigns and sits out ``backoff.max``
before it campaigns again, so a healthy member takes over.

:class:`LeaderRunner` is the shared base of singleton, cron and job roles.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import logging
import threading
from dataclasses import dataclass
from typing import Any

from ..config import RoleSpec
from ..coord.errors import CoordError
from ..coord.records import member_name
from ..coord.watcher import PrefixWatcher
from ..process.slot import Exited, Failed, SlotEvent, SpawnFailed, Stopped
from ..process.spawn import ChildSpec, ChildVars
from ..process.states import Transitions
from ..recipes.election import CampaignCancelled, Election, LeadershipWatch, Topology
from ..recipes.queue_wait import Signal
from .base import RoleRunner, RuntimeContext

log = logging.getLogger("etcdvisor")
STANDBY_HOLD = 2.0  # seconds a standby child waits for the election outcome when no other leader is seen


class LeaderState(enum.Enum):
    CAMPAIGNING = "campaigning"
    LEADER = "leader"
    FOLLOWER = "follower"  # between a lost term and the next campaign
    FAILED = "failed"
    STOPPED = "stopped"


LEADER_STATES = Transitions("leader", {
    LeaderState.CAMPAIGNING: (LeaderState.LEADER, LeaderState.FAILED, LeaderState.STOPPED),
    # a lost term (FOLLOWER: campaigning again at once, or after a step-down's hold)
    LeaderState.LEADER: (LeaderState.FOLLOWER, LeaderState.FAILED, LeaderState.STOPPED),
    LeaderState.FOLLOWER: (LeaderState.CAMPAIGNING, LeaderState.LEADER, LeaderState.FAILED, LeaderState.STOPPED),
    LeaderState.FAILED: (LeaderState.STOPPED,),  # resigned; only the role's stop follows
    LeaderState.STOPPED: (),
})


@dataclass(frozen=True)
class Elected:
    token: int


@dataclass(frozen=True)
class Deposed:
    reason: str
    term: int | None = None  # the term whose watch saw it (None: the current one)


@dataclass(frozen=True)
class LeaderSeen:
    member: str | None


class LeaderRunner(RoleRunner):
    """Campaigns for the role's election and tracks leadership."""

    def __init__(self, spec: RoleSpec, ctx: RuntimeContext):
        super().__init__(spec, ctx)
        self.state = LeaderState.CAMPAIGNING
        self.token = 0
        self.term = 0  # counts terms begun and ended: an outcome issued in another term is stale
        self.leader_member: str | None = None
        self._stop = Signal()  # cancels a campaign's watch at once (recipes/queue_wait.py)
        self._watch: LeadershipWatch | None = None
        self.election: Election | None = None
        self.stepping_down: str | None = None  # why, while the children stop before resigning
        self.hold_until: float | None = None  # no campaign before this (after a step-down)
        self._unready_since: float | None = None

    def start(self) -> None:
        self.election = Election(self.ctx.backend, self.ctx.keys.election(self.name), self.ctx.session,
                                 self.ctx.member_id, name=f"{self.name}:election")
        self._campaign()

    @property
    def started_election(self) -> Election:
        """The role's election, made by :meth:`start` (which every user of it follows)."""
        if self.election is None:
            raise RuntimeError(f"role {self.name}: the election is used before start()")
        return self.election

    def _set_state(self, new: LeaderState) -> None:
        self.state = LEADER_STATES.change(f"role {self.name}", self.state, new)

    @property
    def leading(self) -> bool:
        return self.state is LeaderState.LEADER and self.stepping_down is None

    # --- stepping down ------------------------------------------------------------------
    def step_down(self, reason: str) -> None:
        """Stop this role's children, then resign and sit out ``backoff.max``."""
        if self.state is not LeaderState.LEADER or self.stepping_down is not None:
            return
        self.stepping_down = reason
        self.say(f"stepping down: {reason}; its children stop, then it resigns and does not "
                 f"campaign for {self.spec.backoff.max:g}s")

    def leader_turn(self, now: float) -> None:
        """Each turn (from ``desired``): finish a step-down once no child is alive,
        campaign again after the hold, and (``step_down_after``) watch readiness."""
        health = self.ctx.children_health(self.name) if self.ctx.children_health is not None else {}
        if self.stepping_down is not None:
            if not any(alive for alive, _ready in health.values()):
                self._finish_step_down(now)
            return
        if self.hold_until is not None and now >= self.hold_until:
            self.hold_until = None
            if self.state is LeaderState.FOLLOWER and not self._stop.is_set() and not self.failed_reason:
                self.say("campaigning again after stepping down")
                self._set_state(LeaderState.CAMPAIGNING)
                self.effect("campaign", self._campaign)
        limit = self.spec.step_down_after
        judged = [ready for _alive, ready in health.values() if ready is not None]
        if limit is None or not self.leading or not judged or all(judged):
            self._unready_since = None
            return
        if self._unready_since is None:
            self._unready_since = now
        elif now - self._unready_since >= limit:
            self._unready_since = None
            self.step_down(f"its child has not been ready for {limit:g}s (step_down_after)")

    def _finish_step_down(self, now: float) -> None:
        self.stepping_down = None
        self._end_term()
        self.hold_until = now + self.spec.backoff.max
        if self.election is not None:
            self.effect("resign", self.election.resign)

    def leader_deadline(self, now: float) -> float | None:
        """When ``leader_turn`` must run again without an event."""
        times = [t for t in (self.hold_until,) if t is not None]
        if self.stepping_down is not None:
            times.append(now + 0.25)  # children stop: their events wake the loop too
        if self._unready_since is not None and self.spec.step_down_after is not None:
            times.append(self._unready_since + self.spec.step_down_after)
        return min(times) if times else None

    def next_deadline(self) -> float | None:
        return self.leader_deadline(self.ctx.clock())

    def in_term(self, term: int) -> bool:
        """Is ``term`` (read from :attr:`term` when an effect was queued) still
        this member's current term as leader? An outcome from an earlier term
        is never acted on, even if the member was elected again with the same
        token meanwhile."""
        return self.leading and self.term == term

    def _campaign(self) -> None:
        """Campaign on a thread of its own (called from :meth:`start`, which may block)."""
        threading.Thread(target=self._campaign_loop, daemon=True, name=f"campaign:{self.name}").start()

    def _stop_watch(self) -> None:
        """Stop the leadership watch as an effect (stopping joins its thread)."""
        watch, self._watch = self._watch, None
        if watch is not None:
            self.effect("stop leadership watch", watch.stop)

    def _campaign_loop(self) -> None:
        while not self._stop.is_set():
            try:
                token = self.started_election.campaign(cancel=self._stop)
            except CampaignCancelled:
                return
            except CoordError as exc:
                log.debug("role %s: campaign interrupted: %s", self.name, exc)
                self._stop.wait(1.0)
                continue
            self.post(Elected(token))
            return

    def _on_deposed(self, term: int, reason: str) -> None:  # watch/keepalive thread: only post
        self.post(Deposed(reason, term))

    def handle(self, payload: object, at: float) -> None:
        if isinstance(payload, Elected):
            if self._stop.is_set() or self.failed_reason:
                self.effect("resign", self.started_election.resign)
                return
            self._set_state(LeaderState.LEADER)
            self.token = payload.token
            self.term += 1
            self.leader_member = self.ctx.member_id
            self.say(f"elected leader (LEADER_TOKEN={payload.token})")
            self._watch = LeadershipWatch(self.started_election, functools.partial(self._on_deposed, self.term))
            self.effect("watch leadership", self._watch.start)
        elif (isinstance(payload, Deposed) and self.state is LeaderState.LEADER
              and payload.term in (None, self.term)):
            self.say(f"lost leadership: {payload.reason}")
            stepping_down, self.stepping_down = self.stepping_down, None
            self._end_term()
            if stepping_down is not None:
                self.hold_until = at + self.spec.backoff.max
            elif not self._stop.is_set() and not self.failed_reason:
                self._set_state(LeaderState.CAMPAIGNING)
                self.effect("campaign", self._campaign)
        elif isinstance(payload, LeaderSeen) and self.state is not LeaderState.LEADER:
            self.leader_member = payload.member

    def _end_term(self) -> None:
        self._stop_watch()
        self._set_state(LeaderState.FOLLOWER)
        self.token = 0
        self.term += 1

    def give_up(self, reason: str) -> None:
        """Crash loop or bad command: resign so a healthy member takes over."""
        if self.failed_reason:
            return
        self.failed_reason = reason
        self.say(f"failed ({reason}); resigning so another member takes over")
        self._stop.set()
        self._stop_watch()
        self._set_state(LeaderState.FAILED)
        self.token = 0
        self.term += 1
        if self.election is not None:
            self.effect("resign", self.election.resign)

    def on_slot_event(self, key: str, event: SlotEvent, now: float) -> None:
        if isinstance(event, Failed):
            self.give_up(event.reason)
        elif isinstance(event, SpawnFailed):
            self.give_up(event.message)
        else:
            self.run_health(event)

    def run_health(self, event: SlotEvent) -> None:
        """Cron and job: a run that failed liveness makes the leader step down."""
        if isinstance(event, Exited) and event.reason == "liveness" and self.spec.type.value in ("cron", "job"):
            self.step_down("its run failed its liveness probe")

    def stop(self) -> None:
        self._stop.set()
        if self._watch:
            self._watch.stop()
        self._set_state(LeaderState.STOPPED)
        if self.election is None:
            return
        try:
            self.election.close(resign=True)
        except CoordError as exc:
            log.warning("role %s: resign failed: %s", self.name, exc)

    def leader_vars(self) -> ChildVars:
        """LEADER=1 and LEADER_TOKEN for the leader's children."""
        return ChildVars(leader=True, leader_token=self.token)

    def status(self) -> dict[str, Any]:
        return {**super().status(), "state": self.state.value, "leader": self.leading,
                "token": self.token or None, "stepping_down": self.stepping_down}


class SingletonRunner(LeaderRunner):
    def on_slot_event(self, key: str, event: SlotEvent, now: float) -> None:
        if isinstance(event, Stopped) and self.stepping_down is not None:
            self.leader_turn(now)
        if isinstance(event, Exited) and event.restart_at is None and self.leading:
            self.say(f"leader's child finished with status {event.code}")
            self.record_done(1, 0, event.code)
        super().on_slot_event(key, event, now)

    def __init__(self, spec: RoleSpec, ctx: RuntimeContext):
        super().__init__(spec, ctx)
        self._observer: PrefixWatcher | None = None
        self._hold_from: float | None = None  # campaigning with no other leader seen since
        self._standby_on = False  # the last desired() asked for the standby child

    def handle(self, payload: object, at: float) -> None:
        was_standby = self._standby_on and not self.leading
        super().handle(payload, at)
        if isinstance(payload, Elected) and self.leading and was_standby:
            self.say("standby child replaced by the leader child (LEADER=1)")

    def _follower_known(self) -> bool:
        """Another member is seen leading: a standby child has a leader to follow."""
        return self.leader_member is not None and self.leader_member != self.ctx.member_id

    def _standby_held(self, now: float) -> bool:
        if self._follower_known() or self._standby_on:
            self._hold_from = None
            return False
        if self._hold_from is None:
            self._hold_from = now
        return now < self._hold_from + STANDBY_HOLD

    def next_deadline(self) -> float | None:
        leader = super().next_deadline()
        if self._hold_from is None or self.leading or not self.spec.standby:
            return leader
        hold = self._hold_from + STANDBY_HOLD
        return hold if leader is None else min(leader, hold)

    def describe_waits(self, now: float) -> list[str]:
        if self._hold_from is not None and not self.leading and now < self._hold_from + STANDBY_HOLD:
            return ["standby child waits for the election outcome"]
        return []

    def start(self) -> None:
        super().start()
        if self.spec.standby:
            self._observer = self.started_election.observe(self._on_topology)

    def _on_topology(self, topo: Topology) -> None:
        leader = topo.leader
        member = member_name(leader.key, leader.value, leader.token, log) if leader else None
        self.post(LeaderSeen(member))

    def desired(self, now: float) -> dict[str, ChildSpec]:
        self.leader_turn(now)
        if self.failed_reason or self.stepping_down is not None:
            self._standby_on = False
            return {}
        if self.leading:
            self._standby_on, self._hold_from = False, None
            return {self.name: self.ctx.child_spec(self.spec, self.name, self.leader_vars())}
        if self.spec.standby and self.state is not LeaderState.STOPPED:
            if self._standby_held(now):
                return {}
            self._standby_on = True
            standby = ChildVars(leader=False, leader_member=self.leader_member if self._follower_known() else "")
            spec = self.ctx.child_spec(self.spec, self.name, standby)
            return {self.name: dataclasses.replace(spec, lease_bound=False)}
        self._standby_on = False
        return {}

    def stop(self) -> None:
        if self._observer:
            self._observer.stop()
        super().stop()
