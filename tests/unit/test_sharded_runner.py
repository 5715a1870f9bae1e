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
from etcdvisor.roles.handoff import decode_record
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
