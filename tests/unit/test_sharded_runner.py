"""The sharded runner turn by turn on the in-memory backend: two members'
runners are driven by hand (their children are simulated: a child is
"alive" from the turn its key first appears in ``desired`` until the test
reaps it), and after every turn no two alive children intersect."""

from __future__ import annotations

import os
import queue
import time

import pytest

from etcdvisor.config import load
from etcdvisor.coord import open_backend
from etcdvisor.coord.keys import ClusterKeys
from etcdvisor.coord.session import Session
from etcdvisor.events import RoleEvent
from etcdvisor.process.slot import Started, Stopped
from etcdvisor.roles.assignment import Part, intersects
from etcdvisor.roles.base import RuntimeContext
from etcdvisor.roles.handoff import EVERYTHING, ClusterAlive, Grant, decide_grants, decode_grant, decode_record
from etcdvisor.roles.sharded import ShardedRunner
from etcdvisor.testing import wait_for


def parts(runner: ShardedRunner, key: str) -> frozenset[Part]:
    child = runner.running.get(key) or runner.stopping.get(key)
    return child.parts


class Member:
    def __init__(self, backend, config, member_id: str):
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.session = Session(backend, 10, name=member_id).start()
        self.session.add_listener(lambda ev: self.inbox.put(ev))
        ctx = RuntimeContext(config=config, backend=backend, session=self.session,
                             keys=ClusterKeys(config.cluster), member_id=member_id, endpoints="memory://",
                             post=self.inbox.put, clock=time.monotonic)
        self.runner = ShardedRunner(config.roles["worker"], ctx)
        self.runner.start()
        self.alive: dict[str, frozenset[Part]] = {}
        self.starts = 0

    def turn(self) -> set[str]:
        while True:
            try:
                event = self.inbox.get_nowait()
            except queue.Empty:
                break
            if isinstance(event, RoleEvent):
                self.runner.handle(event.payload, event.at)
            else:
                self.runner.on_session(event)
        desired = self.runner.desired(time.monotonic())
        for effect in self.runner.take_effects():  # the loop runs these off its thread, in order
            try:
                result, error = effect.call(), None
            except Exception as exc:
                result, error = None, exc
            if effect.done is not None:
                effect.done(result, error)
        for key in desired:
            if key not in self.alive:
                self.alive[key] = parts(self.runner, key)
                self.starts += 1
                self.runner.on_slot_event(key, Started(key, pid=1000 + self.starts), time.monotonic())
        return set(desired)

    def reap(self, key: str) -> None:
        del self.alive[key]
        self.runner.on_slot_event(key, Stopped(key, code=0), time.monotonic())

    def close(self) -> None:
        self.runner.stop()
        self.session.close()


@pytest.fixture
def make(tmp_path):
    backend = open_backend(f"memory://runner-{os.urandom(4).hex()}")
    members: list[Member] = []

    def factory(member_id: str, **keys) -> Member:
        role = {"type": "sharded", "command": ["true"], "settle": "0s", **keys}
        lines = ["cluster: unit", "etcd: {endpoints: ['memory://x']}", "roles:", f"  worker: {role!r}"]
        path = tmp_path / "c.yaml"
        path.write_text("\n".join(lines).replace("'", '"'))
        member = Member(backend, load(path, {}), member_id)
        members.append(member)
        return member

    factory.backend = backend
    yield factory
    for member in members:
        member.close()
    backend.close()


def drive(members, until, timeout=5.0, what="condition"):
    """Turn every member until ``until()``; after each round, check safety."""
    def step():
        for member in members:
            member.turn()
        alive = [(m, k, p) for m in members for k, ps in m.alive.items() for p in ps]
        for i, (ma, ka, pa) in enumerate(alive):
            for mb, kb, pb in alive[i + 1:]:
                assert not intersects(pa, pb), f"{ma.runner.ctx.member_id}:{ka} and {mb.runner.ctx.member_id}:{kb}"
        return until()
    return wait_for(step, timeout, what, interval=0.01)


def test_join_order_new_children_wait_for_the_intersecting_old_one(make):
    a = make("a", processes=2)
    drive([a], lambda: set(a.alive) == {"0/2", "1/2"}, what="a runs both indexes")
    b = make("b", processes=2)
    # both compute COUNT=4; nobody may start a x/4 child while a's x/2 children live
    drive([a, b], lambda: a.runner.target and set(a.runner.target) == {"0/4", "1/4"}
          and set(b.runner.target) == {"2/4", "3/4"}, what="new targets")
    for _ in range(20):
        drive([a, b], lambda: True)
        assert set(a.alive) == {"0/2", "1/2"} and not b.alive
    assert any("waits for" in w for w in b.runner.status()["waiting"])
    a.reap("0/2")
    for _ in range(10):
        drive([a, b], lambda: True)
        assert not b.alive  # 1/2 still alive: intersects every x/4
    a.reap("1/2")
    drive([a, b], lambda: set(a.alive) == {"0/4", "1/4"} and set(b.alive) == {"2/4", "3/4"},
          what="the new assignment runs")
    record = decode_record(make.backend.get("/etcdvisor/unit/roles/worker/alive/b").value)
    assert record == {Part(2, 4), Part(3, 4)}


def test_fixed_shards_move_only_what_moves_and_wait_for_the_old_owner(make):
    a = make("a", shards=4)
    drive([a], lambda: set(a.alive) == {f"shard-{s}" for s in range(4)}, what="a owns all shards")
    started = a.starts
    b = make("b", shards=4)
    drive([a, b], lambda: len(a.runner.target) == 2 and len(b.runner.target) == 2, what="published")
    moved = set(b.runner.target)
    for _ in range(10):
        drive([a, b], lambda: True)
        assert not b.alive and set(a.alive) == {f"shard-{s}" for s in range(4)}
    for key in moved:
        a.reap(key)
    drive([a, b], lambda: set(b.alive) == moved, what="b runs the moved shards")
    assert a.starts == started, "a restarted shards it kept"
    assert set(a.alive) == {f"shard-{s}" for s in range(4)} - moved


def test_a_dead_members_shards_wait_for_its_lease(make):
    a = make("a", shards=2)
    b = make("b", shards=2)
    drive([a, b], lambda: len(a.alive) == 1 and len(b.alive) == 1, what="one shard each")
    # b freezes: its record stays until its lease goes; nobody takes its shard before
    b.runner.sequence.stop(leave=False)
    for watcher in b.runner.watchers:
        watcher.stop()
    b.session.close(revoke=False)
    for _ in range(20):
        drive([a], lambda: True)
        assert len(a.alive) == 1
    make.backend.lease_revoke(b.session.lease_id)  # "expiry"
    took = time.monotonic()
    drive([a], lambda: len(a.alive) == 2, what="a takes b's shard")
    assert time.monotonic() - took >= 0.45, "did not wait out the kill bound after the record vanished"
    b.alive.clear()


# --- the coordinator protocol (one coordinator per role grants fenced starts) ------------------
ROLE = "/etcdvisor/unit/roles/worker/"


def freeze(member: Member) -> None:
    """The member stops acting (SIGSTOP, or dead before its lease expired): its
    threads stop, its lease stays until the test revokes it ("expiry")."""
    member.runner.sequence.stop(leave=False)
    for watcher in member.runner.watchers:
        watcher.stop()
    if member.runner.coordinator is not None:
        member.runner.coordinator.close()
    member.session.close(revoke=False)


def grant_of(backend, member_id: str) -> Grant | None:
    kv = backend.get(f"{ROLE}grants/{member_id}/grant")
    return decode_grant(kv.value) if kv is not None else None


def reap_old(members, count: int) -> None:
    """The children that left their member's target exit (the test is their process layer)."""
    for member in members:
        for key in [k for k in member.alive if k in member.runner.stopping]:
            member.reap(key)


def keys_alive(members) -> list[str]:
    return sorted(k for m in members for k in m.alive)


def test_join_order_leave_costs_one_record_write_per_member_and_one_grant_batch(make):
    members = [make(f"m{i}") for i in range(5)]
    drive(members, lambda: keys_alive(members) == [f"{i}/5" for i in range(5)], what="five children")
    assert members[0].runner.coordinator.active() and members[0].runner.coordinator.watcher is not None
    assert members[0].runner.coordinator.members_watcher is not None
    for member in members[1:]:  # only the coordinator follows the alive records and the membership
        assert member.runner.coordinator.watcher is None and member.runner.coordinator.members_watcher is None
        assert {w.prefix for w in member.runner.watchers} == {f"{ROLE}grants/{member.runner.ctx.member_id}/",
                                                              f"{ROLE}assignment"}
        assert member.runner.sequence._watcher is None  # its predecessor in the sequence only
    leaver = members.pop(2)
    leaver.alive.clear()
    leaver.close()
    writes: list[str] = []  # every write is a transaction in the memory backend: one per revision
    real_txn = make.backend.txn
    make.backend.txn = lambda compares, ops, *a, **kw: (writes.append(",".join(sorted(
        {"/".join(op.key[len(ROLE):].split("/")[:2]) for op in ops}))) or real_txn(compares, ops, *a, **kw))
    drive(members, lambda: reap_old(members, 5) or keys_alive(members) == [f"{i}/4" for i in range(4)],
          what="four children of x/4 after the leave")
    # one alive-record write per remaining member, one transaction for the four grants (and the
    # leaver's grant deleted), nothing else
    assert sorted(writes) == ["alive/m0", "alive/m1", "alive/m3", "alive/m4", "assignment",
                              "grants/m0,grants/m1,grants/m2,grants/m3,grants/m4"], writes
    assert grant_of(make.backend, "m2") is None
    for member in members:
        assert grant_of(make.backend, member.runner.ctx.member_id).coordinator == "m0"


def test_new_children_wait_for_the_coordinators_grant(make):
    a = make("a")
    drive([a], lambda: set(a.alive) == {"0/1"}, what="a runs")
    b = make("b")
    drive([a, b], lambda: b.runner.record == {Part(1, 2)} and "0/1" in a.runner.stopping, what="b announces")
    for _ in range(20):
        drive([a, b], lambda: True)
        assert not b.alive
    assert any("the coordinator's start grant" in w for w in b.runner.status()["waiting"])
    drive([a, b], lambda: any("b:1/2 waits for a's child" in w for w in a.runner.status()["coordinator"]["waiting"]),
          what="the coordinator says why b waits")
    assert not b.alive
    a.reap("0/1")
    drive([a, b], lambda: set(a.alive) == {"0/2"} and set(b.alive) == {"1/2"}, what="both run")
    grant = grant_of(make.backend, "b")
    assert grant.parts == {Part(1, 2)} and grant.coordinator == "a"
    assert grant.record == make.backend.get(f"{ROLE}alive/b").mod_revision


def test_coordinator_dies_mid_plan_and_the_next_one_takes_over(make):
    a, b, c = make("a"), make("b"), make("c")
    drive([a, b, c], lambda: keys_alive([a, b, c]) == ["0/3", "1/3", "2/3"], what="three run")
    d = make("d")  # everybody stops x/3 and announces x/4
    drive([a, b, c, d], lambda: reap_old([b, c], 3) or all(
        m.runner.record is not None and {p.count for p in m.runner.record} == {4} for m in (b, c, d)),
        what="b, c, d announced x/4")
    assert "0/3" in a.alive  # the coordinator's own old child still runs: no x/4 grant possible
    freeze(a)  # the coordinator stops mid-plan (SIGSTOP, then its lease runs out)
    for _ in range(30):
        drive([b, c, d], lambda: True)
        assert not (b.alive or c.alive or d.alive)
    a.alive.clear()  # the watchdog killed a's child before its lease could expire
    make.backend.lease_revoke(a.session.lease_id)  # expiry: a's records and grants go with its lease
    took = time.monotonic()
    drive([b, c, d], lambda: reap_old([b, c, d], 4) or (set(b.alive), set(c.alive), set(d.alive))
          == ({"0/3"}, {"1/3"}, {"2/3"}), what="b, c, d converge on x/3, b coordinating")
    assert time.monotonic() - took >= 0.45, "granted within the kill bound after a's record vanished"
    assert b.runner.coordinator.active() and grant_of(make.backend, "d").coordinator == "b"
    assert grant_of(make.backend, "a") is None


def test_a_stale_grant_covers_nothing_announced_after_it(make):
    a, b = make("a"), make("b")
    drive([a, b], lambda: keys_alive([a, b]) == ["0/2", "1/2"], what="two run")
    c = make("c")
    drive([a, b, c], lambda: c.runner.record == {Part(2, 3)}, what="c announces 2/3")
    announced = c.runner.since[Part(2, 3)]
    # a grant decided on c's record before this announcement (a coordinator that saw an
    # earlier revision, delayed or deposed since) arrives: it must not start 2/3 while 0/2 lives
    stale = Grant(1, announced - 1, frozenset({Part(2, 3)}), "ghost")
    make.backend.put(f"{ROLE}grants/c/grant", stale.encode())
    wait_for(lambda: c.turn() is not None and c.runner.grant == stale, 5, "c sees the stale grant")
    for _ in range(30):
        drive([a, b, c], lambda: True)  # drive() fails on any overlap
        assert not c.alive
    assert not stale.covers({Part(2, 3)}, c.runner.since)
    drive([a, b, c], lambda: reap_old([a, b], 2) or keys_alive([a, b, c]) == ["0/3", "1/3", "2/3"],
          what="the real grant starts the new assignment")


def test_coordinator_decision_is_linear_and_honours_every_holder():
    four = [Part(i, 4) for i in range(4)]
    plan = {f"m{i}": frozenset({four[i]}) for i in range(4)}
    announced = ClusterAlive({f"m{i}": frozenset({four[i]}) for i in range(4)}, {f"m{i}": 10 + i for i in range(4)})
    granted, waits = decide_grants(plan, announced, {})
    assert granted == plan and not waits
    # one old child of another count anywhere blocks everything
    old = ClusterAlive({**announced.records, "m1": frozenset({four[1], Part(1, 3)})}, announced.mods)
    granted, waits = decide_grants(plan, old, {})
    assert granted == {} and len(waits) == 4 and all(w.member == "m1" for w in waits)
    # a member that left the group still holds its record until its children are reaped (or its lease goes)
    left = ClusterAlive({**announced.records, "gone": frozenset({Part(0, 3)})}, announced.mods)
    granted, waits = decide_grants(plan, left, {}, members=list(plan))
    assert granted == {} and waits[0].describe() == "m0:0/4 waits for gone's child or lease (left the group) (0/3)"
    # the same partition held by someone else blocks it, and only it
    dup = ClusterAlive({**announced.records, "x": frozenset({four[2]})}, announced.mods)
    granted, waits = decide_grants(plan, dup, {})
    assert set(granted) == {"m0", "m1", "m3"} and waits[0].member == "x"
    # a record that vanished less than the kill bound ago, and a garbage record, hold everything they held
    assert decide_grants(plan, announced, {"gone": frozenset({Part(0, 8)})})[0] == {}
    assert decide_grants(plan, ClusterAlive({**announced.records, "bad": EVERYTHING}), {})[0] == {}
    # nothing is granted that the member did not announce, nor what is outside its plan
    assert decide_grants(plan, ClusterAlive({"m0": frozenset({four[0], four[1]})}), {})[0] == {"m0": {four[0]}}


def test_a_leave_and_a_join_within_settle_are_one_change_even_where_the_coordinators_place_stays(make):
    a, b, c = (make(m, settle="1s") for m in "abc")
    drive([a, b, c], lambda: keys_alive([a, b, c]) == ["0/3", "1/3", "2/3"], what="three run", timeout=10)
    started = a.starts
    b.alive.clear()
    b.close()
    d = make("d", settle="1s")  # within settle: a is 0 of 3 before and after, c and d move
    drive([a, c, d], lambda: reap_old([a, c, d], 3) or (set(a.alive), set(c.alive), set(d.alive))
          == ({"0/3"}, {"1/3"}, {"2/3"}), what="c and d take 1/3 and 2/3", timeout=10)
    assert a.starts == started, "the coordinator's own child was restarted"
    assert grant_of(make.backend, "d").coordinator == "a"


def test_fixed_shards_leave_moves_only_the_leavers_shards_with_few_writes(make):
    members = [make(f"m{i}", shards=16) for i in range(4)]
    drive(members, lambda: len(keys_alive(members)) == 16 and all(len(m.alive) == 4 for m in members),
          what="four shards each")
    started = {m.runner.ctx.member_id: m.starts for m in members}
    leaver = members.pop(1)
    moved = set(leaver.alive)
    leaver.alive.clear()
    leaver.close()
    writes: list[str] = []
    real_txn = make.backend.txn
    make.backend.txn = lambda compares, ops, *a, **kw: (writes.append(",".join(sorted(
        {"/".join(op.key[len(ROLE):].split("/")[:2]) for op in ops}))) or real_txn(compares, ops, *a, **kw))
    drive(members, lambda: len(keys_alive(members)) == 16, what="the leaver's shards taken over")
    assert sorted(keys_alive(members)) == sorted(f"shard-{s}" for s in range(16))
    assert sum(m.starts - started[m.runner.ctx.member_id] for m in members) == len(moved), "only moved shards start"
    receivers = [m.runner.ctx.member_id for m in members if m.starts > started[m.runner.ctx.member_id]]
    # the plan, one announcement per receiver, one grant transaction: <= 3 x moved + 20 by far
    assert sorted(writes) == sorted(["assignment", *(f"alive/{r}" for r in receivers),
                                     ",".join(sorted([*(f"grants/{r}" for r in receivers), "grants/m1"]))]), writes


def test_overlap_handoff_needs_no_alive_record_or_grant(make):
    a = make("a", handoff="overlap")
    b = make("b", handoff="overlap")
    wait_for(lambda: [m.turn() for m in (a, b)] and set(a.alive) == {"p0"} and set(b.alive) == {"p0"}
             and {a.runner.running["p0"].vars.count, b.runner.running["p0"].vars.count} == {2},
             5, "each runs its p0 child with COUNT=2")
    assert not make.backend.get_prefix(ROLE + "alive/").kvs and not make.backend.get_prefix(ROLE + "grants/").kvs
    for member in (a, b):  # the first one publishes the plan, as in every mode; nobody grants
        assert member.runner.coordinator.watcher is None and not member.runner.coordinator.written
    assert make.backend.get(ROLE + "assignment") is not None


@pytest.mark.parametrize("keys", [{}, {"shards": 6}], ids=["join-order", "fixed-shards"])
def test_random_churn_never_runs_intersecting_children(make, keys):
    """Joins, clean leaves and deaths (the coordinator's too) in random order, children
    exiting after random delays; after every turn no two alive children intersect
    (drive checks), and the survivors converge."""
    import random

    rng = random.Random(int.from_bytes(os.urandom(4), "big"))
    members = [make(f"n{i}", **keys) for i in range(3)]
    serial = 3
    for _ in range(12):
        action = rng.choice(["join", "leave", "die", "wait"])
        if action == "join" or len(members) < 2:
            members.append(make(f"n{serial}", **keys))
            serial += 1
        elif action == "leave":
            victim = members.pop(rng.randrange(len(members)))
            victim.alive.clear()  # (its children are stopped before its record is cleared)
            victim.close()
        elif action == "die":
            victim = members.pop(rng.randrange(len(members)))
            freeze(victim)
            victim.alive.clear()  # the watchdog killed them before the lease could expire
            make.backend.lease_revoke(victim.session.lease_id)
        for _ in range(rng.randrange(5, 40)):
            drive(members, lambda: True)
            for member in members:  # each stopping child exits after a random number of turns
                for key in [k for k in member.alive if k in member.runner.stopping and rng.random() < 0.2]:
                    member.reap(key)
    count = keys.get("shards") or len(members)
    drive(members, lambda: reap_old(members, 0) or len(keys_alive(members)) == count
          and all(not m.runner.stopping and set(m.alive) == set(m.runner.target) for m in members),
          what="the survivors converge", timeout=20)


def test_fixed_shards_a_member_whose_shards_stay_keeps_its_status_epoch(make):
    """Issue 17: with fixed shards, status (the member record) shows the EPOCH of the
    member's newest child, not the latest assignment's: a member a new assignment leaves
    alone does not rewrite its record for it (with 1,000 members and 1,024 shards a change
    moves a few shards, and every record rewrite is a write)."""
    members = [make(f"m{i}", shards=16) for i in range(4)]
    drive(members, lambda: len(keys_alive(members)) == 16 and all(len(m.alive) == 4 for m in members),
          timeout=60, what="four shards each")
    before = {m.runner.ctx.member_id: (set(m.alive), m.runner.status()["epoch"]) for m in members}
    assert all(epoch is not None for _, epoch in before.values())
    old_pub = members[0].runner.published.epoch
    joiner = make("m4", shards=16)
    members.append(joiner)
    drive(members, lambda: len(joiner.runner.target) >= 3
          and all(m.runner.published is not None and m.runner.published.epoch != old_pub for m in members),
          timeout=60, what="the joiner is given shards")
    for member in members[:4]:
        for key in [k for k in member.alive if k not in member.runner.target]:
            member.reap(key)  # the moved shards' old children exit
    drive(members, lambda: len(keys_alive(members)) == 16 and len(joiner.alive) >= 3,
          timeout=60, what="the joiner runs its shards")
    new_pub = joiner.runner.published.epoch
    untouched = [m for m in members[:4] if set(m.alive) == before[m.runner.ctx.member_id][0]]
    assert untouched, "a join takes shards from the most loaded members only"
    for member in members[:4]:  # kept or gave away shards: their newest child is as old as before
        assert member.runner.status()["epoch"] == before[member.runner.ctx.member_id][1]
    assert joiner.runner.status()["epoch"] == new_pub != old_pub  # its children start under the new plan


def test_a_burst_of_joins_within_settle_is_one_plan_and_the_others_follow_no_membership(make):
    """Issue 17: a cold start is one reshard after the burst. The coordinator alone follows
    the membership; it publishes once, after ``settle`` without a change; the others hear
    nothing of each other's joins (their sequence watches only their predecessor)."""
    members = [make(f"b{i}", settle="0.5s") for i in range(6)]
    drive(members, lambda: keys_alive(members) == sorted(f"{i}/6" for i in range(6)), timeout=10,
          what="six children of x/6")
    plan = make.backend.get(ROLE + "assignment")
    assert plan.version == 1, "one plan for the whole burst"
    assert [m.runner.coordinator.active() for m in members] == [True] + [False] * 5
    for member in members:
        assert member.starts == 1  # no child started for an intermediate COUNT
        assert member.runner.sequence._watcher is None
