"""``type: sharded``: members split work by INDEX/COUNT, without overlap.

Membership is the role's sequence (``roles/<role>/shard/``, on the lease,
join order). What this member should run (its *target*) comes from
:mod:`.shard_plan`: join order (``processes`` children per member) after
membership stayed unchanged for ``settle`` and a keepalive sent after the
change came back alive; or, with ``shards: N``, the assignment the first
member publishes (sticky, balanced, see :mod:`.assignment`).

Hand-off (``handoff``):

* ``fenced`` (default): a child starts only when no child whose partition
  intersects it is alive anywhere in the cluster (:mod:`.handoff`: alive
  records written before a start and cleared after the reap, a fence key
  serializing additions, a dead member counting as gone when its lease expired
  plus the kill bound), and a keepalive sent after its alive record was written
  came back alive (docs/safety.md, rule 2). Guarantee: no two intersecting children are
  ever alive at once, cluster-wide, as long as children obey the lease
  deadlines (the watchdog enforces them). Deadlock freedom: a member's own
  target never conflicts with itself, every member stops the children that
  left its target without waiting for anything, and records of dead members
  vanish at lease expiry, so every wait ends. No-owner gap per partition:
  clean leave or move: stop time of the old child + ``settle`` (join order:
  + a second stop time, since every COUNT changes) + two etcd round trips and a
  keepalive round trip; crash: lease TTL + ``KILL_BOUND`` + ``settle`` + the
  same round trips.
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

from .. import timing
from ..coord import types as t
from ..coord.errors import CoordError
from ..coord.retry import ALIVE_RECORD_RETRY
from ..coord.session import SessionEventKind
from ..coord.watcher import Change, PrefixWatcher
from ..process.slot import Exited, Failed, SlotEvent, SpawnFailed, Started, Stopped
from ..process.spawn import ChildSpec
from ..recipes.sequence import INVALID, Info, Sequence
from .base import RoleRunner
from .handoff import Blockers, Child, ClusterAlive, Wait, encode_record, parse_snapshot
from .shard_coordinator import Coordinator
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


class ShardedRunner(RoleRunner):
    def __init__(self, spec, ctx):
        super().__init__(spec, ctx)
        self.fenced = (self.spec.handoff or "fenced") == "fenced"
        self.shards = self.spec.shards
        self.processes = self.spec.processes or 1
        self.phase = Phase.JOINING
        self.latest: Info = INVALID
        self.latest_at = 0.0
        self.applied: Info | None = None  # join order: the settled membership in use
        self.settle_until = 0.0
        self.published: Published | None = None
        self.published_mod = 0  # mod revision of the assignment key (0: absent)
        self.target: dict[str, Child] = {}
        self.target_at = 0.0  # overlap mode: confirm the target like a win
        self.running: dict[str, Child] = {}  # slot key -> child, what desired() returns
        self.stopping: dict[str, Child] = {}  # left the target, child still alive
        self.live: set[str] = set()  # slot keys with a started, not yet reaped child
        self.approved: dict[str, tuple[Child, float]] = {}  # in the record, awaiting keepalive
        self.cluster = ClusterAlive({})
        self.graveyard: dict[str, tuple[frozenset, float]] = {}
        self.record: frozenset | None = None  # what our alive record holds (None: unknown)
        self.record_rev = 0  # store revision of our last record write
        self.writing = False
        self.retry_at: float | None = None
        self.write_failures = 0  # failed alive-record writes in a row
        self.fence_failed_rev = -1
        self.waits: list[Wait] = []
        self._fence_logged: tuple[list[str], list[str]] | None = None  # debug: the last fence decision logged
        self._due = False
        keys = self.ctx.keys
        self.alive_prefix = keys.role(self.name) + "alive/"
        self.fence_key = keys.role(self.name) + "alive"
        self.record_key = self.alive_prefix + self.ctx.member_id
        self.coordinator = Coordinator(self) if self.shards else None
        self.watchers: list[PrefixWatcher] = []
        self.sequence: Sequence | None = None

    def start(self) -> None:
        keys = self.ctx.keys
        if self.fenced:
            self.watchers.append(PrefixWatcher(self.ctx.backend, self.fence_key, self._on_alive,
                                               name=f"{self.name}:alive"))
        if self.shards:
            self.watchers.append(PrefixWatcher(self.ctx.backend, keys.role(self.name) + "assignment",
                                               self._on_assignment, name=f"{self.name}:assignment"))
        for watcher in self.watchers:
            watcher.start()
        self.sequence = Sequence(self.ctx.backend, keys.shard(self.name), self.ctx.member_id,
                                 self.ctx.session, self.post, name=f"{self.name}:shard")
        self.sequence.start(wait=0)

    # --- edge threads: only post ------------------------------------------------
    def _on_alive(self, change: Change) -> None:
        self.post(parse_snapshot(self.alive_prefix, self.fence_key, change.snapshot.values(), change.revision))

    def _on_assignment(self, change: Change) -> None:
        kv = change.snapshot.get(self.ctx.keys.role(self.name) + "assignment")
        if kv is None:
            self.post(Published(0, ()))
        else:  # garbage decodes to None: keep its mod revision for the CAS
            self.post(decode_published(kv.value, kv.mod_revision) or Published(0, (), mod=kv.mod_revision))

    # --- loop thread: pure decisions ----------------------------------------------
    def handle(self, payload, at: float) -> None:
        if isinstance(payload, ClusterAlive):
            self._on_cluster(payload, at)
        elif isinstance(payload, Published):
            self.published = payload if payload.members else None
            self.published_mod = payload.mod
        elif isinstance(payload, Info) and not self.failed_reason:
            self._on_info(payload, at)

    def _on_cluster(self, cluster: ClusterAlive, at: float) -> None:
        for member, parts in self.cluster.records.items():
            if member not in cluster.records and parts and member != self.ctx.member_id:
                self.graveyard[member] = (parts, at + timing.KILL_BOUND)
        for member in cluster.records:
            self.graveyard.pop(member, None)
        self.cluster = cluster
        mine = cluster.records.get(self.ctx.member_id)
        if self.record and not self.writing and cluster.revision >= self.record_rev and mine != self.record:
            log.warning("role %s: our alive record was changed or deleted by someone else; rewriting",
                        self.name)
            self.record = None

    def _on_info(self, info: Info, at: float) -> None:
        self.latest, self.latest_at = info, at
        if info.invalid():
            if self.applied is not None:
                self.say(f"stop: no longer a member (count={info.count})")
            self.applied = None
            self.phase = Phase.INVALID
            return
        if self.applied is not None and info.equal(self.applied):
            return  # same INDEX/COUNT: the child keeps running untouched
        self.settle_until = at + (self.spec.settle or 0.0)
        self.phase = Phase.SETTLING
        self.ctx.session.request_keepalive()

    def on_session(self, event) -> None:
        if event.kind is SessionEventKind.NEW_LEASE:
            self.record = None  # the old record went with the old lease

    def _settled(self, now: float) -> bool:
        """Join order: adopt the latest membership once settled and confirmed."""
        if self.latest.invalid():
            return False
        if self.applied is None or not self.latest.equal(self.applied):
            session = self.ctx.session
            if now < self.settle_until or not (session.alive and session.last_alive_sent > self.latest_at):
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
            if self.coordinator is not None:
                self.coordinator.tick(now)
            pub = self.published
            mine = pub.owners.get(self.ctx.member_id, ()) if pub and pub.shards == self.shards else ()
            return shard_children(mine, self.shards, self.spec.children == "per-member",
                                  pub.epoch if pub else 0, keep)
        if not self._settled(now) or self.applied is None:
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
        if self.fenced:
            self._fenced_step(now)
        else:
            self._overlap_step()
        self._update_phase()
        # named role[INDEX] (the log prefix ``worker[3]|``, the JSON ``slot``); the slot
        # key (``3/8``, ``p0``, ``shard-3``) stays the identity; a per-member child has
        # no INDEX and keeps its key
        return {key: self.ctx.child_spec(self.spec, f"{self.name}[{child.env.get('INDEX', key)}]",
                                         child.env)
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
        self.graveyard = {m: g for m, g in self.graveyard.items() if g[1] > now}
        busy = {k: c.parts for k, c in {**self.running, **self.stopping}.items()}
        blockers = Blockers(self.ctx.member_id, self.cluster, {m: g[0] for m, g in self.graveyard.items()}, busy,
                            members=self.latest.members or None)
        free, self.waits = [], []
        for key, child in sorted(self.target.items()):
            if key in self.running or key in self.approved:
                continue
            waits = blockers.waits_for(child)
            if waits:
                self.waits.extend(waits)
            else:
                free.append(child)
        if log.isEnabledFor(logging.DEBUG):
            self._debug_fence(free)
        self._sync_record(now, free)

    def _debug_fence(self, free: list[Child]) -> None:
        """``--log-level debug``: each fence decision that changed (waits, children free to start)."""
        decision = ([w.describe() for w in self.waits], [c.key for c in free])
        if decision != self._fence_logged:
            self._fence_logged = decision
            log.debug("role %s: fence at revision %d: free to start %s; waits: %s", self.name,
                      self.cluster.revision, _short(decision[1]), "; ".join(decision[0][:8]) or "none")

    def _record_parts(self, extra=()) -> frozenset:
        children = [*self.running.values(), *self.stopping.values(), *(c for c, _ in self.approved.values()), *extra]
        return frozenset(p for c in children for p in c.parts)

    def _sync_record(self, now: float, free: list[Child]) -> None:
        """Queue at most one alive-record write: additions fenced, removals plain."""
        if self.writing or not self.ctx.session.alive or (self.retry_at and now < self.retry_at):
            return
        if free and self.fence_failed_rev == self.cluster.revision:
            free = []  # the fence moved since our snapshot: wait for the newer one
        want = self._record_parts(free)
        if want == self.record or (self.record is None and not want):
            return
        adds = want - (self.record or frozenset())
        lease, body, cluster = self.ctx.session.lease_id, encode_record(want), self.cluster
        backend = self.ctx.backend
        if adds:
            compares = [t.mod_revision(self.fence_key, "=", cluster.fence_mod)]
            ops = [t.Put(self.fence_key, b""), t.Put(self.record_key, body, lease=lease)]

            def call():
                result = backend.txn(compares, ops)
                return result.revision if result.succeeded else 0
        else:
            def call():
                return backend.put(self.record_key, body, lease=lease)
        self.writing = True
        self.effect("alive record", call, lambda rev, err: self._written(want, free, cluster, rev, err))

    def _written(self, want: frozenset, free: list[Child], cluster: ClusterAlive, revision, error) -> None:
        now = self.ctx.clock()
        self.writing, self._due = False, True
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
        if not revision:
            log.debug("role %s: fence moved since the snapshot at revision %d: deciding again on a newer one",
                      self.name, cluster.revision)
            self.fence_failed_rev = cluster.revision
            return
        if log.isEnabledFor(logging.DEBUG):
            log.debug("role %s: alive record written at revision %d: %s", self.name, revision,
                      _short(sorted(str(p) for p in want)))
        self.record, self.record_rev = want, revision
        for child in free:
            if self.target.get(child.key) is child:
                self.approved[child.key] = (child, now)
        if free:
            self.ctx.session.request_keepalive()

    def _update_phase(self) -> None:
        if self.failed_reason or self.phase is Phase.STOPPED:
            return
        pub = self.published
        if self.latest.invalid():
            self.phase = Phase.INVALID if self.phase is not Phase.JOINING else Phase.JOINING
        elif self.shards and not (pub and pub.members == self.latest.members):
            self.phase = Phase.SETTLING  # waiting for the coordinator's publication
        elif not self.shards and not self.latest.equal(self.applied):
            self.phase = Phase.SETTLING
        elif set(self.target) - set(self.running) or self.stopping:
            self.phase = Phase.HANDOFF
        else:
            self.phase = Phase.RUNNING

    def _log_target(self, target: dict[str, Child]) -> None:
        added = sorted(set(target) - set(self.target))
        removed = sorted(set(self.target) - set(target))
        self.say(f"assignment: +{_short(added)} -{_short(removed)}; keeping {len(set(target) & set(self.target))}")

    def next_deadline(self) -> float | None:
        times = [g[1] for g in self.graveyard.values()]
        if self._due:
            times.append(0.0)
        if self.phase is Phase.SETTLING and not self.shards:
            times.append(self.settle_until)
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
            self.phase = Phase.FAILED
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
        self.phase = Phase.STOPPED
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
        if self.fenced:
            try:  # our children are gone (the loop stops a role's children first)
                self.ctx.backend.delete(self.record_key)
            except CoordError as exc:
                log.warning("role %s: could not clear the alive record: %s", self.name, exc)

    def describe_waits(self, now: float) -> list[str]:
        found = [w.describe() for w in self.waits[:20]]
        found += [f"{key} waits for a keepalive confirming its alive record" for key in sorted(self.approved)]
        latest = self.latest
        if (not self.shards and not latest.invalid() and now >= self.settle_until
                and (self.applied is None or not latest.equal(self.applied))):
            found.append(f"membership {latest.index} of {latest.count} waits for a keepalive confirming the lease")
        return found

    def status(self) -> dict:
        info = self.applied
        parts = sorted(p for c in self.running.values() for p in c.parts)
        status = {**super().status(), "state": self.phase.value, "handoff": "fenced" if self.fenced else "overlap",
                  "epoch": info.epoch if info else (self.published.epoch if self.published else None),
                  "waiting": [w.describe() for w in self.waits[:20]],
                  "stopping": sorted(self.stopping)}
        if self.shards:
            status.update(shards=[p.index for p in parts], count=self.shards, index=None,
                          coordinator=self.coordinator.status() if self.coordinator else None)
        else:
            indexes = [p.index for p in parts]
            status.update(indexes=indexes, index=indexes[0] if indexes else None,
                          count=parts[0].count if parts else (info.count * self.processes if info else None))
        return status


def _short(keys: list[str]) -> str:
    return "[" + ", ".join(keys[:8]) + (f", ... {len(keys)} in all" if len(keys) > 8 else "") + "]"
