"""Issue 17: the coordinator of a fenced sharded role (the member first in join
order) dies mid-plan, right after it published a plan or its start grants.
The next member in join order takes over from what is in etcd; the children's
own start/stop records (:mod:`.shard_history`) show no two intersecting
children alive at once, and everything converges."""

from __future__ import annotations

import time

import pytest

from etcdvisor.roles.handoff import decode_grant
from etcdvisor.roles.shard_plan import decode_published

from .conftest import TTL, wait_for
from .shard_history import assert_exact_cover, assert_no_intersecting_overlap, is_exact_cover, parts_of

pytestmark = [pytest.mark.etcd]

SETTLE = "0.3s"


def settled(fleet, role: str, count: int, members: set[str], timeout: float) -> None:
    """The final assignment runs: an exact cover by ``members`` with each member holding
    floor or ceil of count/members partitions (an exact cover that is not balanced yet is
    a hand-off still under way: a partition is about to move)."""
    def balanced_cover() -> bool:
        history = fleet.history()
        if not is_exact_cover(history, role, count, members):
            return False
        held: dict[str, int] = {}
        for instance in history.live(role):
            held[instance.member] = held.get(instance.member, 0) + len(parts_of(instance))
        low = count // len(members)
        return all(n in (low, -(-count // len(members))) for n in held.values())
    wait_for(balanced_cover, timeout, f"{role}: balanced exact cover of {count} by {sorted(members)}")
    time.sleep(0.2)
    assert_exact_cover(fleet.history(), role, count, time.time())


def poll(what: str, check, timeout: float = 60.0, interval: float = 0.005):
    """A tight poll (the test must act right after the coordinator wrote)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(interval)
    pytest.fail(f"timed out waiting for {what}")


def test_join_order_coordinator_frozen_right_after_granting(fleet):
    """m0 coordinates; m3 joins; the moment m0's grants for COUNT=4 are in etcd,
    m0 is SIGSTOPped. Its watchdog stops its child before its lease expires;
    the next in join order takes over and grants COUNT=3 to m1..m3; m0 resumes,
    rejoins (COUNT=4)."""
    role = fleet.worker_role("sharded", settle=SETTLE, env={
        "WORK_RECORD": str(fleet.record_path), "WORK_INTERVAL": "1000", "WORK_STOP_DELAY": "0.3"})
    config = fleet.write_config({"worker": role})
    fleet.start("m0", config)  # first in join order: the coordinator
    settled(fleet, "worker", 1, {"m0"}, timeout=90)
    fleet.start("m1", config)
    fleet.start("m2", config)
    settled(fleet, "worker", 3, {"m0", "m1", "m2"}, timeout=90)
    backend = fleet.backend()
    prefix = f"/etcdvisor/{fleet.cluster}/roles/worker/grants/"

    def grants_for_four():
        found = {}
        for kv in backend.get_prefix(prefix).kvs:
            grant = decode_grant(kv.value)
            if grant is not None and grant.coordinator == "m0" and any(p.count == 4 for p in grant.parts):
                found[kv.key] = grant
        return found

    fleet.start("m3", config)
    granted = poll("m0 granting COUNT=4", grants_for_four)
    coordinator = fleet.members["m0"]
    coordinator.pause()
    assert granted, granted
    survivors = {"m1", "m2", "m3"}
    settled(fleet, "worker", 3, survivors, timeout=TTL + 45)
    history = fleet.history()
    assert not [i for i in history.live("worker") if i.member == "m0"], "the frozen coordinator's child lives"
    # the next member in join order (m1 or m2: they were started together) took over
    shard = f"/etcdvisor/{fleet.cluster}/roles/worker/shard/"
    first = min(backend.get_prefix(shard).kvs, key=lambda kv: kv.create_revision).key[len(shard):]
    assert first in survivors
    takeover = poll(f"{first} granting", lambda: [g for g in (decode_grant(kv.value) for kv in
                                                              backend.get_prefix(prefix).kvs)
                                                  if g is not None and g.coordinator == first], timeout=10)
    assert takeover
    coordinator.resume()
    settled(fleet, "worker", 4, survivors | {"m0"}, timeout=TTL + 45)
    assert_no_intersecting_overlap(fleet.history(), "worker")


def test_fixed_shards_coordinator_killed_right_after_publishing(fleet):
    """m0 coordinates 8 shards over m0..m2; m3 joins; the moment m0's new plan
    (with m3) is published, m0 is SIGKILLed. The next in join order takes over
    from the published plan: republishes without m0 and grants; the shards
    converge, never doubly alive."""
    role = fleet.worker_role("sharded", settle=SETTLE, shards=8, env={
        "WORK_RECORD": str(fleet.record_path), "WORK_INTERVAL": "1000", "WORK_STOP_DELAY": "0.3"})
    config = fleet.write_config({"worker": role})
    fleet.start("m0", config)  # first in join order: the coordinator
    settled(fleet, "worker", 8, {"m0"}, timeout=90)
    fleet.start("m1", config)
    fleet.start("m2", config)
    settled(fleet, "worker", 8, {"m0", "m1", "m2"}, timeout=90)
    backend = fleet.backend()
    key = f"/etcdvisor/{fleet.cluster}/roles/worker/assignment"

    def published_with_m3():
        kv = backend.get(key)
        pub = decode_published(kv.value, kv.mod_revision) if kv is not None else None
        return pub if pub is not None and "m3" in pub.members else None

    fleet.start("m3", config)
    plan = poll("m0 publishing the plan with m3", published_with_m3)
    fleet.members["m0"].kill()
    assert plan.members[0] == "m0" and set(plan.members) == {"m0", "m1", "m2", "m3"}
    survivors = {"m1", "m2", "m3"}
    settled(fleet, "worker", 8, survivors, timeout=TTL + 45)

    def republished():
        pub = published_with_m3()
        return pub if pub is not None and set(pub.members) == survivors else None

    assert republished(), "the new coordinator did not publish the plan without m0"
    assert_no_intersecting_overlap(fleet.history(), "worker")
