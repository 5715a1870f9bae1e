"""``type: sharded``: members split work by INDEX/COUNT, without overlap.

Membership is the role's sequence (``roles/<role>/shard/``, on the lease,
join order). A member does not follow the whole sequence: it watches only its
predecessor there, to learn whether it is first (:class:`~..recipes.sequence.Place`,
``follow="head"``), and the *plan* the first member (the coordinator,
:mod:`.shard_coordinator`) publishes at ``roles/<role>/assignment`` once the
membership stayed unchanged for ``settle``: the members in join order (join
order: this member's INDEX is its position there, COUNT their number, times
``processes``) or, with ``shards: N``, the sticky, balanced shard owners (see
:mod:`.assignment`). A burst of joins or leaves within ``settle`` is one plan,
one event per member: a change costs the fleet O(N), a cold start too. What
this member should run (its *target*) comes from :mod:`.shard_plan`, once a
keepalive sent after the plan arrived came back alive. A plan counts for this
member only if it was computed after the member's key was created (its
``epoch`` is not older than the key): an older plan may list an earlier key of
the same member id.

Hand-off (``handoff``):

* ``fenced`` (default): a child starts only when no child whose partition
  intersects it is alive anywhere in the cluster. One coordinator per role,
  the member first in join order (:mod:`.shard_coordinator`), grants starts;
  each member (:meth:`ShardedRunner._fenced_step`) stops the children that
  left its target at once, announces its target in its alive record
  (``roles/<role>/alive/<member>``, on its lease: one write, once its stopping
  children were reaped), watches only its own grant
  (``roles/<role>/grants/<member>/grant``), and starts a child once the grant
  covers the child's partitions as announced (:meth:`.handoff.Grant.covers`)
  and a keepalive sent after that came back alive (docs/safety.md, rule 2).
  Guarantee: no two intersecting children are ever alive at once,
  cluster-wide, as long as children obey the lease deadlines (the watchdog
  enforces them). Deadlock freedom: a member's own target never conflicts
  with itself, every member stops the children that left its target without
  waiting for anything, records of dead members vanish at lease expiry, and a
  dead coordinator's place passes to the next member in join order, so every
  wait ends. No-owner gap per partition: clean leave or move: ``settle`` +
  the stop time of the old child (join order: of the slowest old child, since
  every COUNT changes) + a few etcd round trips and a keepalive round trip; crash:
  lease TTL + ``KILL_BOUND`` + ``settle`` + the same round trips.
* ``overlap``: start at once; an old child may run next to a new one for up to
  ``settle`` + ``stop_timeout`` (faster, for children that tolerate it).

A child whose partitions did not change keeps running with the same pid.
States (:class:`Phase`): JOINING -> SETTLING -> HANDOFF -> RUNNING ->
(SETTLING|HANDOFF -> RUNNING)*, any -> INVALID (lease trouble, children
stopped at once) -> SETTLING, any -> FAILED (crash loop: leave the group so
the others take over), any -> STOPPED.
"""

from __future__ import annotations

import enum
import logging
from typing import Any

from ..config import RoleSpec
from ..coord.errors import CoordError
from ..coord.retry import ALIVE_RECORD_RETRY
from ..coord.session import SessionEvent, SessionEventKind
from ..coord.watcher import Change, PrefixWatcher
from ..process.slot import Exited, Failed, SlotEvent, SpawnFailed, Started, Stopped
from ..process.spawn import ChildSpec
from ..process.states import Transitions
from ..recipes.sequence import INVALID, Info, Place, Sequence
from .assignment import Part
from .base import RoleRunner, RuntimeContext
from .handoff import NO_GRANT, Blockers, Child, ClusterAlive, Grant, Wait, encode_record, read_grant
from .shard_coordinator import AliveSnapshot, Coordinator, MembershipSnapshot, grant_key
from .shard_plan import Published, decode_published, join_order_children, shard_children

log = logging.getLogger("etcdvisor")
RETRY = ALIVE_RECORD_RETRY  # a failed alive-record write: 1 s, doubling while it fails, at most 8 s


class Phase(enum.Enum):
    JOINING = "joining"
    SETTLING = "settling"
    HANDOFF = "handoff"
    RUNNING = "running"
    INVALID = "invalid"
    FAILED = "failed"
    STOPPED = "stopped"


_MOVING = (Phase.SETTLING, Phase.HANDOFF, Phase.RUNNING, Phase.INVALID, Phase.FAILED, Phase.STOPPED)
PHASES = Transitions("shard phase", {
    # the phase follows the facts (_update_phase): between the live ones any change is a
    # real one (a new membership while handing off: SETTLING again); JOINING is only left
    Phase.JOINING: _MOVING,
    Phase.SETTLING: _MOVING,
    Phase.HANDOFF: _MOVING,
    Phase.RUNNING: _MOVING,
    Phase.INVALID: _MOVING,
    Phase.FAILED: (Phase.STOPPED,),  # left the group; only the role's stop follows
    Phase.STOPPED: (),
})


class ShardedRunner(RoleRunner):
    def __init__(self, spec: RoleSpec, ctx: RuntimeContext):
        super().__init__(spec, ctx)
        self.fenced = (self.spec.handoff or "fenced") == "fenced"
        self.shards = self.spec.shards
        self.processes = self.spec.processes or 1
        self.phase = Phase.JOINING  # the first state: not a transition
        self.latest: Info = INVALID  # our place in the published plan (invalid: none, or not ours)
        self.latest_at = 0.0
        self.place: Place | None = None  # whether we are first, from the sequence (None: not heard yet)
        self.plan_heard = False  # the assignment watch delivered its first value
        self.applied: Info | None = None  # join order: the settled membership in use
        self.published: Published | None = None
        self.published_mod = 0  # mod revision of the assignment key (0: absent)
        self.target: dict[str, Child] = {}
        self.target_at = 0.0  # overlap mode: confirm the target like a win
        self.running: dict[str, Child] = {}  # slot key -> child, what desired() returns
        self.stopping: dict[str, Child] = {}  # left the target, child still alive
        self.live: set[str] = set()  # slot keys with a started, not yet reaped child
        self.approved: dict[str, tuple[Child, float]] = {}  # in the record, awaiting keepalive
        self.record: frozenset[Part] | None = None  # what our alive record holds (None: unknown)
        self.record_rev = 0  # store revision of our last record write
        self.since: dict[Part, int] = {}  # part -> revision of the write that put it in our record
        self.grant: Grant = NO_GRANT  # our start grant, as last seen on its watch
        self.writing = False
        self.retry_at: float | None = None
        self.write_failures = 0  # failed alive-record writes in a row
        self.waits: list[Wait] = []
        self._fence_logged: tuple[list[str], list[str]] | None = None  # debug: the last fence decision logged
        self._due = False
        keys = self.ctx.keys
        self.alive_prefix = keys.alive(self.name)
        self.record_key = self.alive_prefix + self.ctx.member_id
        self.grant_key = grant_key(self, self.ctx.member_id)
        # the first member in join order publishes the plan and grants fenced starts
        self.coordinator: Coordinator | None = Coordinator(self)
        self.watchers: list[PrefixWatcher] = []
        self.sequence: Sequence | None = None
        self.started = False  # start() ran: coordination threads may be started

    def start(self) -> None:
        self.started = True
        keys = self.ctx.keys
        if self.fenced:  # our own start grant, nothing else (the coordinator alone watches alive/)
            self.watchers.append(PrefixWatcher(self.ctx.backend, self.grant_key.rsplit("/", 1)[0] + "/",
                                               self._on_grant, name=f"{self.name}:grant"))
        self.watchers.append(PrefixWatcher(self.ctx.backend, keys.assignment(self.name),
                                           self._on_assignment, name=f"{self.name}:assignment"))
        for watcher in self.watchers:
            watcher.start()
        self.sequence = Sequence(self.ctx.backend, keys.shard(self.name), self.ctx.member_id,
                                 self.ctx.session, self.post, name=f"{self.name}:shard", follow="head")
        self.sequence.start(wait=0)

    # --- edge threads: only post ------------------------------------------------
    def _on_grant(self, change: Change) -> None:
        kv = change.snapshot.get(self.grant_key)
        self.post(read_grant(kv) if kv is not None else NO_GRANT)

    def _on_assignment(self, change: Change) -> None:
        kv = change.snapshot.get(self.ctx.keys.assignment(self.name))
        if kv is None:
            self.post(Published(0, ()))
        else:  # garbage decodes to None: keep its mod revision for the CAS
            self.post(decode_published(kv.value, kv.mod_revision) or Published(0, (), mod=kv.mod_revision))

    # --- loop thread: pure decisions ----------------------------------------------
    def handle(self, payload: object, at: float) -> None:
        if isinstance(payload, AliveSnapshot):
            if self.coordinator is not None:
                self.coordinator.on_snapshot(payload, at)
        elif isinstance(payload, MembershipSnapshot):
            if self.coordinator is not None:
                self.coordinator.on_membership(payload, at)
        elif isinstance(payload, Grant):
            self.grant = payload
        elif isinstance(payload, Published):
            self.published = payload if payload.members else None
            self.published_mod = payload.mod
            self.plan_heard = True
            self._refresh_latest(at)
        elif isinstance(payload, Place):
            self.place = payload
            self._refresh_latest(at)

    def _refresh_latest(self, at: float) -> None:
        """Our place in the published plan, once we heard both the plan and our sequence."""
        place, pub = self.place, self.published
        if place is None or not self.plan_heard or self.failed_reason:
            return  # (after an upgrade the handed-over place stands until both are heard)
        if place.invalid():
            info = Info(-1, self.latest.count, self.latest.epoch, self.latest.members)
        elif pub is None and not self.shards and not self.latest.invalid():
            # no join-order plan at all: deleted by hand (the coordinator publishes it again), or
            # a coordinator of an earlier version, which did not publish one (an in-place upgrade
            # of the fleet): keep our place and children until a plan says otherwise
            return
        elif pub is None or pub.shards != (self.shards or 0) or pub.epoch < place.joined:
            info = INVALID  # no plan for our key yet: the coordinator publishes one after settle
        elif self.ctx.member_id in pub.members:
            info = Info(pub.members.index(self.ctx.member_id), len(pub.members), pub.epoch, pub.members)
        else:  # a plan computed after our key was created does not list it: the key is gone
            info = Info(-1, len(pub.members), pub.epoch, pub.members)
            sequence = self.sequence
            if sequence is not None and info != self.latest:
                self.effect("look for our sequence key again", sequence.kick)
        if info != self.latest:
            self._on_info(info, at)

    def _set_phase(self, new: Phase) -> None:
        self.phase = PHASES.change(f"role {self.name}", self.phase, new)

    def _on_info(self, info: Info, at: float) -> None:
        self.latest, self.latest_at = info, at
        if self.phase is Phase.STOPPED:
            return  # a membership event that was on its way when the role stopped
        if info.invalid():
            if self.applied is not None:
                self.say(f"stop: no longer a member (count={info.count})")
            self.applied = None
            self._set_phase(Phase.INVALID)
            return
        if self.applied is not None and info.equal(self.applied):
            return  # same INDEX/COUNT: the child keeps running untouched
        self._set_phase(Phase.SETTLING)
        self.ctx.session.request_keepalive()

    def on_session(self, event: SessionEvent) -> None:
        if event.kind is SessionEventKind.NEW_LEASE:
            self.record, self.since = None, {}  # the old record went with the old lease

    def _settled(self) -> bool:
        """Join order: adopt our place in the latest plan (settled: the coordinator waited
        out ``settle`` before publishing it) once a keepalive sent after it came back alive
        (its session event wakes the loop: no deadline of our own)."""
        if self.latest.invalid():
            return False
        if self.applied is None or not self.latest.equal(self.applied):
            session = self.ctx.session
            if not (session.alive and session.last_alive_sent > self.latest_at):
                return self.applied is not None
            old, self.applied = self.applied, self.latest
            self.say(f"membership settled: position {self.applied.index} of {self.applied.count} "
                     f"(EPOCH={self.applied.epoch}" + (f", was {old.index} of {old.count})" if old else ")"))
        return True

    def _compute_target(self, now: float) -> dict[str, Child]:
        if self.failed_reason or self.latest.invalid() or not self.ctx.session.alive:
            return {}
        keep = {**self.running, **{k: c for k, (c, _) in self.approved.items()}, **self.target}
        if self.shards:
            pub = self.published
            mine = pub.owners.get(self.ctx.member_id, ()) if pub and pub.shards == self.shards else ()
            return shard_children(mine, self.shards, self.spec.children == "per-member",
                                  pub.epoch if pub else 0, keep)
        if not self._settled() or self.applied is None:
            return {}
        return join_order_children(self.applied.index, self.applied.count, self.processes,
                                   self.applied.epoch, keep, by_position=not self.fenced)

    def desired(self, now: float) -> dict[str, ChildSpec]:
        self._due = False
        target = self._compute_target(now)
        if target != self.target:  # Child equality: same key and partitions
            if log.isEnabledFor(logging.DEBUG):
                log.debug("role %s: assignment computed: %s (membership %s of %s, epoch %s)", self.name,
                          _short(sorted(target)), self.latest.index, self.latest.count, self.latest.epoch)
            self.target_at = now
            self.ctx.session.request_keepalive()
            self._log_target(target)
        self.target = target
        if self.coordinator is not None:
            self.coordinator.tick(now)
        if self.fenced:
            self._fenced_step(now)
        else:
            self._overlap_step()
        self._update_phase()
        # named role[INDEX] (the log prefix ``worker[3]|``, the JSON ``slot``); the slot
        # key (``3/8``, ``p0``, ``shard-3``) stays the identity; a per-member child has
        # no INDEX and keeps its key
        return {key: self.ctx.child_spec(
                    self.spec, f"{self.name}[{key if child.vars.index is None else child.vars.index}]", child.vars)
                for key, child in self.running.items()}

    def _overlap_step(self) -> None:
        """Leave at once; start (or replace in place) once a keepalive sent
        after the change came back alive."""
        session = self.ctx.session
        if session.alive and session.last_alive_sent > self.target_at:
            self.running = dict(self.target)
        else:
            self.running = {k: c for k, c in self.running.items() if k in self.target}

    def _fenced_step(self, now: float) -> None:
        """Stop what left the target at once; announce the target in our alive
        record (one write, once our stopping children are reaped); start a child
        once the coordinator's grant covers its announced partitions and a
        keepalive sent after that came back alive."""
        session = self.ctx.session
        for key in [k for k in self.running if k not in self.target]:
            child = self.running.pop(key)
            if key in self.live:
                self.stopping[key] = child  # stays in the alive record until reaped
        for key, (child, at) in list(self.approved.items()):
            if key not in self.target:
                del self.approved[key]
            elif session.alive and session.last_alive_sent > at:
                del self.approved[key]
                self.running[key] = child
        busy = {k: c.parts for k, c in self.stopping.items()}
        own = Blockers(self.ctx.member_id, ClusterAlive({}), {}, busy) if busy else None
        self.waits = []
        grant, since, record = self.grant, self.since, self.record
        for key, child in sorted(self.target.items()):
            if key in self.running or key in self.approved:
                continue
            waits = own.waits_for(child) if own is not None else []
            if waits:
                self.waits.extend(waits)
            elif record is not None and child.parts <= record and grant.covers(child.parts, since):
                self.approved[key] = (child, now)
                session.request_keepalive()
            else:
                # (announced in our alive record or about to be: one reason, so that the
                # wait log sees one wait, not two)
                self.waits.append(Wait(key, "the coordinator", "start grant", tuple(sorted(child.parts))))
        if log.isEnabledFor(logging.DEBUG):
            self._debug_fence()
        self._sync_record(now)

    def _debug_fence(self) -> None:
        """``--log-level debug``: each change of what our children wait for."""
        decision = ([w.describe() for w in self.waits], sorted(self.approved))
        if decision != self._fence_logged:
            self._fence_logged = decision
            log.debug("role %s: grant (record %d) covers %s; waits: %s", self.name, self.grant.record,
                      _short(decision[1]), "; ".join(decision[0][:8]) or "none")

    def _record_parts(self) -> frozenset[Part]:
        children = [*self.running.values(), *self.stopping.values(), *(c for c, _ in self.approved.values()),
                    *self.target.values()]
        return frozenset(p for c in children for p in c.parts)

    def _sync_record(self, now: float) -> None:
        """Queue at most one alive-record write: everything alive or stopping,
        plus the target (announced, to be granted). While own children are
        stopping the record stays as it is (it lists them, which is true), so a
        reshard costs one write per member, made once they are reaped."""
        if self.writing or not self.ctx.session.alive or (self.retry_at and now < self.retry_at):
            return
        if self.stopping and self.record is not None:
            return
        want = self._record_parts()
        if want == self.record or (self.record is None and not want):
            return
        lease, body, backend = self.ctx.session.lease_id, encode_record(want), self.ctx.backend

        def call() -> int:
            return backend.put(self.record_key, body, lease=lease)

        self.writing = True
        self.effect("alive record", call, lambda rev, err: self._written(want, lease, rev, err))

    def _written(self, want: frozenset[Part], lease: int, revision: int, error: BaseException | None) -> None:
        # (the effect's outcome: ``revision`` is the put's, read only when there is no ``error``)
        now = self.ctx.clock()
        self.writing, self._due = False, True
        if lease != self.ctx.session.lease_id:
            self.record, self.since = None, {}  # written on a lease that is gone: write again
            return
        if error is not None:
            # once per outage: the member's 'etcd ... unreachable' line tells the rest
            level = logging.WARNING if not self.write_failures else logging.DEBUG
            delay = RETRY.delay(self.write_failures + 1)
            self.write_failures += 1
            log.log(level, "role %s: cannot write the alive record (retrying in %gs): %s", self.name, delay, error)
            self.retry_at = now + delay
            return
        if self.write_failures > 1:
            log.info("role %s: alive record written after %d failed attempts", self.name, self.write_failures)
        self.retry_at, self.write_failures = None, 0
        if log.isEnabledFor(logging.DEBUG):
            log.debug("role %s: alive record written at revision %d: %s", self.name, revision,
                      _short(sorted(str(p) for p in want)))
        old = self.record or frozenset()
        self.since = {p: self.since[p] if p in old and p in self.since else revision for p in want}
        self.record, self.record_rev = want, revision

    def _update_phase(self) -> None:
        if self.failed_reason or self.phase is Phase.STOPPED:
            return
        pub = self.published
        if self.latest.invalid():
            self._set_phase(Phase.INVALID if self.phase is not Phase.JOINING else Phase.JOINING)
        elif self.shards and not (pub and pub.members == self.latest.members):
            self._set_phase(Phase.SETTLING)  # waiting for the coordinator's publication
        elif not self.shards and not self.latest.equal(self.applied):
            self._set_phase(Phase.SETTLING)
        elif set(self.target) - set(self.running) or self.stopping:
            self._set_phase(Phase.HANDOFF)
        else:
            self._set_phase(Phase.RUNNING)

    def _log_target(self, target: dict[str, Child]) -> None:
        added = sorted(set(target) - set(self.target))
        removed = sorted(set(self.target) - set(target))
        self.say(f"assignment: +{_short(added)} -{_short(removed)}; keeping {len(set(target) & set(self.target))}")

    def next_deadline(self) -> float | None:
        times: list[float | None] = []
        if self._due:
            times.append(0.0)
        if self.retry_at is not None:
            times.append(self.retry_at)
        if self.coordinator is not None:
            times.append(self.coordinator.next_deadline())
        present = [x for x in times if x is not None]
        return min(present) if present else None

    def on_slot_event(self, key: str, event: SlotEvent, now: float) -> None:
        if isinstance(event, Started):
            self.live.add(key)
            return
        if isinstance(event, (Exited, Stopped, Failed, SpawnFailed)):
            self.live.discard(key)
            if key not in self.live and self.stopping.pop(key, None) is not None:
                self._due = True
        if isinstance(event, Exited) and event.restart_at is None and key in self.running:
            child = self.running[key]
            self.say(f"child {key} finished with status {event.code}")
            for part in sorted(child.parts):
                self.record_done(part.count, part.index, -1 if event.code is None else event.code)
        if isinstance(event, (Failed, SpawnFailed)) and not self.failed_reason:
            reason = event.reason if isinstance(event, Failed) else event.message
            self.failed_reason = reason
            self._set_phase(Phase.FAILED)
            self.say(f"failed ({reason}); leaving the group so the others reshard")
            sequence = self.sequence
            if sequence is not None:
                self.effect("leave the group", lambda: sequence.stop(leave=True))

    def leaving(self) -> None:
        """Fenced: leave the group while our children are still stopping, so the
        others settle on the new assignment meanwhile. Safe because the alive
        record (on our lease) still lists those children until :meth:`stop`
        clears it after they were reaped, and conflicting children elsewhere
        wait for it (docs/safety.md). Overlap mode waits for stop()."""
        if self.fenced and self.sequence is not None:
            sequence = self.sequence
            self.effect("leave the group early (fenced hand-off)", lambda: sequence.stop(leave=True))

    def stop(self) -> None:
        if self.phase is Phase.STOPPED:
            return
        self._set_phase(Phase.STOPPED)
        if self.fenced and self.record:
            try:  # our children are gone (the loop stops a role's children first): say so
                # before leaving, so the others need not wait out a kill bound for them
                self.ctx.backend.put(self.record_key, encode_record(()), lease=self.ctx.session.lease_id)
            except CoordError as exc:
                log.warning("role %s: could not clear the alive record: %s", self.name, exc)
        if self.sequence is not None:
            self.sequence.stop(leave=True)
        for watcher in self.watchers:
            watcher.stop()
        if self.coordinator is not None:
            self.coordinator.close()
        if self.fenced:
            try:  # our children are gone (the loop stops a role's children first)
                self.ctx.backend.delete(self.record_key)
            except CoordError as exc:
                log.warning("role %s: could not clear the alive record: %s", self.name, exc)

    def describe_waits(self, now: float) -> list[str]:
        found = [w.describe() for w in self.waits[:20]]
        if self.coordinator is not None and self.coordinator.watching:
            # the coordinator's own waits: another member's start held back by a lost or
            # stopping member's child, lease or kill bound ("vm-c:2/3 waits for vm-b's child (1/2)")
            found += [w.describe() for w in self.coordinator.waits[:20]]
        found += [f"{key} waits for a keepalive confirming its alive record" for key in sorted(self.approved)]
        place = self.place
        if place is not None and not place.invalid() and self.latest.invalid() and not self.failed_reason:
            # joined, but no plan lists our key yet: the coordinator publishes one after
            # ``settle`` (held back while it is lost: until its lease expires)
            found.append(f"membership waits for the coordinator's plan (joined at revision {place.joined})")
        latest = self.latest
        if not self.shards and not latest.invalid() and (self.applied is None or not latest.equal(self.applied)):
            found.append(f"membership {latest.index} of {latest.count} waits for a keepalive confirming the lease")
        return found

    def status(self) -> dict[str, Any]:
        info = self.applied
        parts = sorted(p for c in self.running.values() for p in c.parts)
        status = {**super().status(), "state": self.phase.value, "handoff": "fenced" if self.fenced else "overlap",
                  # fixed shards: the EPOCH of our newest child, not the latest assignment's, so
                  # that a member a new assignment leaves alone does not rewrite its record
                  "epoch": info.epoch if info else max((c.vars.epoch for c in self.running.values()
                                                        if c.vars.epoch is not None), default=None),
                  "waiting": [w.describe() for w in self.waits[:20]],
                  "stopping": sorted(self.stopping)}
        if self.coordinator is not None and self.coordinator.active():
            status["coordinator"] = self.coordinator.status()
        if self.shards:
            status.update(shards=[p.index for p in parts], count=self.shards, index=None)
        else:
            indexes = [p.index for p in parts]
            status.update(indexes=indexes, index=indexes[0] if indexes else None,
                          count=parts[0].count if parts else (info.count * self.processes if info else None))
        return status


def _short(keys: list[str]) -> str:
    return "[" + ", ".join(keys[:8]) + (f", ... {len(keys)} in all" if len(keys) > 8 else "") + "]"
