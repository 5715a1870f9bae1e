"""The coordinator of a ``sharded`` role: the first member in join order.

One member per role coordinates: the one at position 0 of the role's
sequence (``roles/<role>/shard/``, join order). Why position 0 rather than an
election: every member is in the sequence anyway and learns whether it is
first by watching only its predecessor there (``Sequence(follow="head")``), so
no extra keys or campaign writes; position 0 is the oldest member, so it
changes only when that member goes; and nothing here needs a single
coordinator for safety (two that briefly both believe they are first are only
slower, see below).

It alone follows the whole membership (a watch on the sequence prefix, started
when it becomes first), and it has two jobs:

* **publish the plan**: whenever the settled membership (``settle`` without
  change: a burst of joins and leaves is one plan) differs from the members of
  the published plan, write the new plan to ``roles/<role>/assignment``
  (:class:`~.shard_plan.Published`) with a compare-and-swap on the key's mod
  revision (a stale coordinator's write fails; it retries from the newer
  value). Join order: the members in join order (each member's INDEX is its
  position there). Fixed shards (``shards: N``): also the owners, computed with
  :func:`~etcdvisor.roles.assignment.balance_shards` from the published plan
  and the membership snapshot. The key is not on a lease: it is the previous
  plan the next coordinator starts from, so stickiness survives a
  coordinator's death. The other members watch only this key (and their
  grant), never each other, so a change costs each of them one event.

* **grant starts** (``handoff: fenced``): it alone watches the alive records
  (``roles/<role>/alive/``); after the plan settled, it writes each member's
  start grant ``roles/<role>/grants/<member>/grant`` (:class:`~.handoff.Grant`:
  the plan's ``epoch``, the mod revision of the member's alive record it
  decided on, and the partitions granted) once the partitions that member
  announced in its alive record intersect nothing else alive
  (:func:`~.handoff.decide_grants`). All grants that became possible at once go
  out in one transaction (batches of :data:`BATCH` puts), on the coordinator's
  lease: a coordinator whose lease expired cannot write one, and its grants
  vanish with it. A new coordinator (after a death mid-plan) starts from what
  is published: the alive records and the published assignment; it grants
  nothing until :data:`~etcdvisor.timing.KILL_BOUND` after its first snapshot
  (a record that vanished just before it started watching is honoured that
  long, as the graveyard would), and re-grants what is due.

Safety does not rest on a single coordinator: a grant covers only partitions
the member's record announced at or before the revision the grant names, and
was decided on a snapshot showing that record and nothing intersecting; the
member starts only partitions announced continuously since then
(:meth:`~.handoff.Grant.covers`). Of two intersecting announcements, the later
one is written after the snapshot that granted the earlier (or that snapshot
would have shown it), so any snapshot that could grant the later shows the
earlier until its child was reaped. A grant from a dead or deposed
coordinator is therefore either still true or covers nothing.

States: IDLE -> SETTLING (membership changed) -> PUBLISHING -> IDLE;
granting: off (not first) -> WATCHING (waiting for the first snapshot and the
kill bound) -> GRANTING.
"""

from __future__ import annotations

import enum
import logging
from typing import TYPE_CHECKING, Any

from .. import timing
from ..coord import types as t
from ..coord.retry import STORE_RETRY
from ..coord.watcher import Change, PrefixWatcher
from ..process.states import Transitions
from ..recipes._mailbox import LatestMailbox
from ..recipes.sequence import INVALID, Info, compute_info
from .assignment import Part, balance_shards, join_order_parts, moved
from .handoff import ClusterAlive, Grant, Wait, decide_grants, parse_snapshot
from .shard_plan import Published

if TYPE_CHECKING:
    from .sharded import ShardedRunner

log = logging.getLogger("etcdvisor")
WATCH_GRACE = 2.0  # after a successful publish, wait this long for the watch to show it
BATCH = 100  # puts per grant transaction (etcd's --max-txn-ops defaults to 128)
DECIDE_EVERY = 0.05  # seconds between two grant decisions (each is linear in the alive partitions)


class CoordinatorState(enum.Enum):
    IDLE = "idle"
    SETTLING = "settling"
    PUBLISHING = "publishing"


COORDINATOR_STATES = Transitions("coordinator", {
    CoordinatorState.IDLE: (CoordinatorState.SETTLING,),
    CoordinatorState.SETTLING: (CoordinatorState.IDLE, CoordinatorState.PUBLISHING),
    CoordinatorState.PUBLISHING: (CoordinatorState.IDLE,),
})


class MembershipSnapshot:
    """What the coordinator's membership watcher posts (``gen``: which watcher;
    ``newest``: the greatest create revision of a member key)."""

    def __init__(self, gen: int, info: Info, newest: int = 0):
        self.gen = gen
        self.info = info
        self.newest = newest


class AliveSnapshot:
    """What the coordinator's alive watcher posts (``gen``: which watcher)."""

    def __init__(self, gen: int, cluster: ClusterAlive):
        self.gen = gen
        self.cluster = cluster


class Coordinator:
    def __init__(self, runner: ShardedRunner):
        self.runner = runner
        self.state = CoordinatorState.IDLE  # the first state: not a transition
        self.due_at: float | None = None
        self.retry_at: float | None = None
        self.key = runner.ctx.keys.assignment(runner.name)
        self.sent: tuple[tuple[str, ...], float] | None = None  # members published, until when to trust it
        # granting (fenced hand-off)
        self.alive_prefix = runner.ctx.keys.alive(runner.name)
        self.watching = False  # granting: we are first and follow the alive records
        self.watcher: PrefixWatcher | None = None  # (None in turn tests: they post the snapshots)
        self.gen = 0
        self.cluster: ClusterAlive | None = None
        self.graveyard: dict[str, tuple[frozenset[Part], float]] = {}
        self.grant_from: float | None = None  # first snapshot + kill bound
        self.written: dict[str, Grant] = {}  # grants this coordinator wrote (and that came back)
        self.granting = False  # a grant write is in flight
        self.grant_retry_at: float | None = None
        self.dirty = True
        self.plan_seen: tuple[str, int, int] | None = None
        self._plan: tuple[tuple[str, int, int], tuple[int, dict[str, frozenset[Part]]]] | None = None
        self.waits: list[Wait] = []
        self.waited = False  # the kill bound after the first snapshot has passed
        self.decided_at = float("-inf")
        self.decide_at: float | None = None  # the next decision, held back by DECIDE_EVERY
        # the whole membership (only while first): what the published plan must match
        self.membership: Info = INVALID
        self.membership_at = 0.0
        self.newest = 0  # a plan older than this member key cannot list it (a restart under the same id)
        self.following = False
        self.members_watcher: tuple[PrefixWatcher, LatestMailbox[Change]] | None = None
        self.members_gen = 0

    def grant_key(self, member: str) -> str:
        return grant_key(self.runner, member)

    # --- loop thread --------------------------------------------------------------
    def active(self) -> bool:
        # (not gated on a recent keepalive: a late keepalive under load would restart the
        # coordination, with its kill-bound wait; grants are decided on snapshots, so a
        # coordinator whose lease is in doubt is never unsafe, and its grant writes, on
        # that lease, fail once it expired. The place turns invalid when the lease is lost.)
        runner = self.runner
        place = runner.place
        return place is not None and place.head and not place.invalid() and not runner.failed_reason

    def _set_state(self, new: CoordinatorState) -> None:
        self.state = COORDINATOR_STATES.change(f"role {self.runner.name}", self.state, new)

    def tick(self, now: float) -> None:
        active = self.active()
        if active and not self.following:
            self._start_following()
        elif not active and self.following:
            self._stop_following()
        self._publish_tick(now, active)
        if self.runner.fenced:
            self._grant_tick(now, active)

    def _settled_membership(self) -> Info | None:
        """The membership we follow, if it is valid and puts us first (None: not yet)."""
        info = self.membership
        return None if info.invalid() or info.index != 0 else info

    def _publish_tick(self, now: float, active: bool) -> None:
        """Publish if this member leads and the settled membership changed."""
        runner = self.runner
        info, pub, shards = self._settled_membership(), runner.published, runner.shards or 0
        if not active or info is None or self.state is CoordinatorState.PUBLISHING:
            self.due_at = None
            return
        if self.current(pub, info):
            if self.state is not CoordinatorState.IDLE:
                self._set_state(CoordinatorState.IDLE)
            self.due_at, self.sent = None, None
            return
        if self.sent is not None and self.sent[0] == info.members and now < self.sent[1]:
            self.due_at = self.sent[1]  # written; its watch event is on the way
            return
        if self.state is not CoordinatorState.SETTLING:
            self._set_state(CoordinatorState.SETTLING)
        self.due_at = max(self.membership_at + (runner.spec.settle or 0.0), self.retry_at or 0.0)
        if now < self.due_at:
            return
        if shards:
            prev = pub.owners if pub is not None and pub.shards == shards else {}
            owners = balance_shards(prev, info.members, shards)
            what = f"{len(moved(prev, owners)) if prev else shards} shards move"
        else:
            owners, what = {}, f"COUNT={len(info.members) * runner.processes}"
        new = Published(info.epoch, info.members, owners, shards)
        backend, mod, body = runner.ctx.backend, runner.published_mod, new.encode()
        self._set_state(CoordinatorState.PUBLISHING)
        self.due_at = None
        runner.say(f"coordinator: publishing the plan for {len(info.members)} members (EPOCH={info.epoch}, {what})")

        def call() -> bool:
            return backend.txn([t.mod_revision(self.key, "=", mod)], [t.Put(self.key, body)]).succeeded

        runner.effect("publish assignment", call, lambda ok, error: self._published(info.members, ok, error))

    def _published(self, members: tuple[str, ...], ok: bool, error: BaseException | None) -> None:
        self._set_state(CoordinatorState.IDLE)
        self.runner._due = True
        if ok and error is None:
            self.sent = (members, self.runner.ctx.clock() + WATCH_GRACE)
        if error is not None or not ok:
            log.warning("role %s: coordinator: publish %s; retrying", self.runner.name,
                        f"failed: {error}" if error else "lost a race (the assignment changed)")
            self.retry_at = self.runner.ctx.clock() + (STORE_RETRY.delay(1) if error else 0.2)
        else:
            self.retry_at = None

    # --- granting -----------------------------------------------------------------
    def plan(self, now: float) -> tuple[int, dict[str, frozenset[Part]]] | None:
        """The published plan (epoch, member -> partitions), or None while a newer one is
        due (the membership changed since: its grants would be undone at once). Computed
        once per plan: a thousand members' partitions are not rebuilt every turn."""
        runner = self.runner
        pub, info, shards = runner.published, self._settled_membership(), runner.shards or 0
        if pub is None or info is None or not self.current(pub, info):
            return None
        key = ("shards" if shards else "join", pub.mod, pub.epoch)
        if self._plan is None or self._plan[0] != key:
            members, k = pub.members, runner.processes
            if shards:
                parts = {m: frozenset(Part(s, shards) for s in pub.owners.get(m, ())) for m in members}
            else:
                parts = {m: frozenset(join_order_parts(i, len(members), k)) for i, m in enumerate(members)}
            self._plan = (key, (pub.epoch, parts))
        return self._plan[1]

    def _grant_tick(self, now: float, active: bool) -> None:
        if not active:
            if self.watching:
                self._stop_watching()
            return
        if not self.watching:
            self._start_watching()
            return
        if self.decide_at is not None and now >= self.decide_at:
            self.decide_at = None  # (set again below if the decision is still held back)
        if self.cluster is None or self.grant_from is None:
            return
        expired = [m for m, (_, until) in self.graveyard.items() if until <= now]
        for member in expired:
            del self.graveyard[member]
            self.dirty = True
        if self.grant_retry_at is not None and now >= self.grant_retry_at:
            self.grant_retry_at = None
        if now < self.grant_from:
            return
        self.waited = True
        if self.granting or self.grant_retry_at is not None:
            return
        plan = self.plan(now)
        if plan is None:
            self.waits = []
            return
        seen = self._plan[0] if self._plan else None
        if seen != self.plan_seen:
            self.plan_seen, self.dirty = seen, True
        if not self.dirty:
            return
        if now < self.decided_at + DECIDE_EVERY:  # a burst of alive records: one decision per 50 ms
            self.decide_at = self.decided_at + DECIDE_EVERY
            return
        self.dirty, self.decided_at, self.decide_at = False, now, None
        epoch, parts = plan
        cluster = self.cluster
        granted, self.waits = decide_grants(parts, cluster, {m: g[0] for m, g in self.graveyard.items()},
                                            members=tuple(parts))
        me = self.runner.ctx.member_id
        new: dict[str, Grant] = {}
        for member, ok in granted.items():
            record = cluster.mods.get(member, 0)
            old = self.written.get(member)
            if old is None or old.record != record or not ok <= old.parts:
                new[member] = Grant(epoch, record, ok, me)
        if not new:
            return
        # grants of members gone from the plan go in the same write (they cover nothing a
        # rejoining member announces: its announcements come later than their record)
        stale = [m for m in self.written if m not in parts and m not in cluster.records]
        self._write(new, stale)

    def _write(self, new: dict[str, Grant], stale: list[str]) -> None:
        runner = self.runner
        backend, lease = runner.ctx.backend, runner.ctx.session.lease_id
        ops: list[t.Op] = [t.Put(self.grant_key(m), g.encode(), lease=lease) for m, g in sorted(new.items())]
        ops += [t.Delete(self.grant_key(m)) for m in stale]
        if new:
            runner.say(f"coordinator: granting starts to {len(new)} member(s) "
                       f"(EPOCH={next(iter(new.values())).epoch})")

        def call() -> int:
            revision = 0
            for at in range(0, len(ops), BATCH):
                revision = backend.txn([], ops[at:at + BATCH]).revision
            return revision

        self.granting = True
        gen = self.gen
        runner.effect("grant starts", call, lambda rev, error: self._granted(gen, new, stale, error))

    def _granted(self, gen: int, new: dict[str, Grant], stale: list[str], error: BaseException | None) -> None:
        self.granting = False
        self.runner._due = True
        if gen != self.gen:
            return
        if error is not None:
            delay = STORE_RETRY.delay(1)
            log.warning("role %s: coordinator: cannot write grants (retrying in %gs): %s",
                        self.runner.name, delay, error)
            self.grant_retry_at = self.runner.ctx.clock() + delay
            self.dirty = True
            return
        self.grant_retry_at = None
        self.written.update(new)
        for member in stale:
            self.written.pop(member, None)

    def _start_watching(self) -> None:
        runner = self.runner
        self.gen += 1
        gen = self.gen
        self.cluster, self.grant_from, self.graveyard, self.written = None, None, {}, {}
        self.dirty, self.waits, self.plan_seen, self.waited = True, [], None, False
        self.watching = True
        runner.say("coordinator: first in join order; following the alive records to grant starts")
        if not runner.started:
            return  # driven by a test that posts the snapshots itself

        decoded: dict[str, tuple[int, ClusterAlive]] = {}  # key -> (mod revision, its one-record parse)

        def on_change(change: Change) -> None:
            # decode only the records that changed: a reshard brings one event per member, and
            # re-decoding a thousand records for each would be quadratic
            records: dict[str, frozenset[Part]] = {}
            mods: dict[str, int] = {}
            for key, kv in change.snapshot.items():
                cached = decoded.get(key)
                if cached is None or cached[0] != kv.mod_revision:
                    cached = (kv.mod_revision, parse_snapshot(self.alive_prefix, (kv,), change.revision))
                    decoded[key] = cached
                records.update(cached[1].records)
                mods.update(cached[1].mods)
            for key in [k for k in decoded if k not in change.snapshot]:
                del decoded[key]
            runner.post(AliveSnapshot(gen, ClusterAlive(records, mods, change.revision)))

        self.watcher = PrefixWatcher(runner.ctx.backend, self.alive_prefix, on_change,
                                     name=f"{runner.name}:alive")
        self.watcher.start()  # a thread start: no store call on the loop thread

    def _stop_watching(self) -> None:
        watcher, self.watcher, self.watching = self.watcher, None, False
        self.gen += 1
        self.cluster, self.grant_from, self.graveyard, self.written, self.waits = None, None, {}, {}, []
        self.plan_seen, self.waited = None, False
        if watcher is not None:
            self.runner.effect("stop watching the alive records", watcher.stop)

    def on_snapshot(self, snap: AliveSnapshot, at: float) -> None:
        if snap.gen != self.gen:
            return  # from a watcher we stopped
        cluster = snap.cluster
        if self.cluster is None:
            self.grant_from = at + timing.KILL_BOUND
        else:
            for member, parts in self.cluster.records.items():
                if member not in cluster.records and parts:
                    self.graveyard[member] = (parts, at + timing.KILL_BOUND)
        for member in cluster.records:
            self.graveyard.pop(member, None)
        self.cluster, self.dirty = cluster, True

    # --- the whole membership (only while first) ----------------------------------------
    def _start_following(self) -> None:
        runner = self.runner
        self.members_gen += 1
        gen = self.members_gen
        self.following, self.membership = True, INVALID
        if not runner.started:
            return  # driven by a test that posts the snapshots itself
        prefix, me = runner.ctx.keys.shard(runner.name), runner.ctx.member_id
        if not prefix.endswith("/"):
            prefix += "/"

        def compute(change: Change) -> None:  # (coalesced: a burst of joins is sorted once per turn)
            kvs = change.snapshot.values()
            runner.post(MembershipSnapshot(gen, compute_info(prefix, me, kvs, change.revision),
                                           max((kv.create_revision for kv in kvs), default=0)))

        mailbox: LatestMailbox[Change] = LatestMailbox(compute, name=f"{runner.name}:members")
        self.members_watcher = (PrefixWatcher(runner.ctx.backend, prefix, mailbox.put,
                                              name=f"{runner.name}:members"), mailbox)
        self.members_watcher[0].start()  # a thread start: no store call on the loop thread

    def _stop_following(self) -> None:
        watcher, self.members_watcher, self.following = self.members_watcher, None, False
        self.members_gen += 1
        self.membership = INVALID
        if watcher is not None:
            self.runner.effect("stop following the membership", lambda: _stop_watcher(*watcher))

    def on_membership(self, snap: MembershipSnapshot, at: float) -> None:
        if snap.gen != self.members_gen:
            return  # from a watcher we stopped
        old = self.membership
        if snap.info.members != old.members or snap.info.invalid() != old.invalid() or snap.newest != self.newest:
            self.membership_at = at  # the settle window restarts at every change
        self.membership, self.newest = snap.info, snap.newest

    def current(self, pub: Published | None, info: Info) -> bool:
        """Whether ``pub`` is the plan for the membership ``info``."""
        return (pub is not None and pub.members == info.members and pub.shards == (self.runner.shards or 0)
                and pub.epoch >= self.newest)

    def close(self) -> None:
        """Stop the watchers (runner stop, off the loop)."""
        watcher, self.watcher, self.watching = self.watcher, None, False
        self.gen += 1
        if watcher is not None:
            watcher.stop()
        members, self.members_watcher, self.following = self.members_watcher, None, False
        self.members_gen += 1
        if members is not None:
            _stop_watcher(*members)

    def next_deadline(self) -> float | None:
        times = [x for x in (self.due_at, self.grant_retry_at, self.decide_at) if x is not None]
        times += [until for _, until in self.graveyard.values()]
        if self.grant_from is not None and self.watching and not self.waited:
            times.append(self.grant_from)
        return min(times) if times else None

    def status(self) -> dict[str, Any]:
        pub = self.runner.published
        return {"state": self.state.value, "due_at": self.due_at,
                "granting": self.watching, "grants": len(self.written),
                "members": None if self.membership.invalid() else len(self.membership.members),
                "plan_epoch": pub.epoch if pub is not None else None,
                "waiting": [w.describe() for w in self.waits[:20]]}


def _stop_watcher(watcher: PrefixWatcher, mailbox: LatestMailbox[Change]) -> None:
    watcher.stop()
    mailbox.close()


def grant_key(runner: ShardedRunner, member: str) -> str:
    """``roles/<role>/grants/<member>/grant``: one key under a prefix of its own,
    so that a member's watch on its prefix sees its grant and nothing else."""
    return runner.ctx.keys.grant(runner.name, member)
