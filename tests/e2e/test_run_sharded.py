"""``supervisor run`` with a sharded role on several members: exact INDEX/COUNT
coverage when settled, reshard latency after a clean leave and after a crash,
children that die with a SIGKILLed supervisor, children kept when their
assignment does not change."""

from __future__ import annotations

import time

import pytest

from .conftest import TTL, assert_no_duplicate_shards, assert_sharded_settled, pid_alive, wait_for, wait_pids_gone

pytestmark = [pytest.mark.slow, pytest.mark.etcd]

SETTLE = 0.5


def settled_at(fleet, role: str, count: int, members: set[str], timeout: float) -> float:
    """Wait until the live children of ``role`` are one per member in ``members``
    with COUNT=count and indices 0..count-1; return the start time of the last
    of them."""

    def check():
        live = fleet.history().live(role)
        if ({i.member for i in live} == members and len(live) == count
                and {i.count for i in live} == {count}
                and sorted(i.index for i in live) == list(range(count))):
            return max(i.start for i in live)
        return None

    return wait_for(check, timeout, f"{role} settled at COUNT={count} on {sorted(members)}")


def checkpoint(fleet, role: str, count: int) -> float:
    """A settled moment: the live set is checked against the real processes too."""
    t = time.time()
    live = fleet.history().live_at(t, role)
    assert all(pid_alive(i.pid, i.start) for i in live), [(i.member, i.pid) for i in live]
    assert_sharded_settled(fleet.history(), t, role, count)
    return t


def test_sharded_reshards_after_leave_and_crash(fleet):
    config = fleet.write_config({"worker": fleet.worker_role("sharded", settle=f"{SETTLE}s")})
    members = fleet.start_many(3, config)
    ids = {m.id for m in members}
    settled_at(fleet, "worker", 3, ids, timeout=30)
    time.sleep(SETTLE + 0.5)  # nothing may change once settled
    checkpoints = [(checkpoint(fleet, "worker", 3), 3)]

    # clean leave: SIGTERM, lease revoked, the others reshard after `settle`
    leaving = members[0]
    leaving.term()
    assert leaving.wait(10) == 0
    ids.discard(leaving.id)
    last_start = settled_at(fleet, "worker", 2, ids, timeout=10)
    leave_latency = last_start - leaving.exited_at
    assert leave_latency <= SETTLE + 1.0, f"reshard after a clean leave took {leave_latency:.2f}s"
    time.sleep(SETTLE + 0.5)
    checkpoints.append((checkpoint(fleet, "worker", 2), 2))

    # crash: SIGKILL; its children die with it, the lease expires after the TTL
    crashing = members[1]
    own_children = [i.pid for i in fleet.history().live("worker") if i.member == crashing.id]
    assert own_children
    killed_at = crashing.kill()
    survivors = wait_pids_gone(own_children, timeout=1.0)
    assert not survivors, f"children of the SIGKILLed supervisor still alive after 1s: {survivors}"
    ids.discard(crashing.id)
    last_start = settled_at(fleet, "worker", 1, ids, timeout=TTL + 10)
    crash_latency = last_start - killed_at
    assert crash_latency <= TTL + SETTLE + 1.0, f"reshard after a crash took {crash_latency:.2f}s"
    time.sleep(SETTLE + 0.5)
    checkpoints.append((checkpoint(fleet, "worker", 1), 1))

    history = fleet.history()
    for t, count in checkpoints:
        assert_sharded_settled(history, t, "worker", count)
    assert_no_duplicate_shards(history, "worker")
    # each epoch's children were started from one membership snapshot
    assert len({i.epoch for i in history.of("worker")}) >= 3


def test_unchanged_assignment_keeps_its_child(fleet):
    """A member that is not part of the role, and a member that joins and leaves
    within `settle`, leave INDEX/COUNT unchanged: the children keep running."""
    settle = 3.0
    config = fleet.write_config({"worker": fleet.worker_role("sharded", settle=f"{settle}s")})
    other = fleet.write_config({"other": fleet.worker_role("sharded", settle="0s")}, name="other.yaml")
    fleet.start("m0", config)
    fleet.start("m1", config)
    settled_at(fleet, "worker", 2, {"m0", "m1"}, timeout=30)
    before = {i.member: i.pid for i in fleet.history().live("worker")}

    # a member running another role joins and leaves
    outsider = fleet.start("x0", other)
    wait_for(lambda: any(i.member == "x0" for i in fleet.history().live("other")), 30, "x0's child")
    outsider.term()
    assert outsider.wait(10) == 0

    # a member of the role joins and leaves again before the others' settle ends
    late = fleet.start("m2", config)
    late.wait_output("worker:shard: joined", timeout=30)
    late.term()
    assert late.wait(10) == 0
    assert "m2" not in {i.member for i in fleet.history().of("worker")}, "m2 started a child while settling"

    # well past the settle time of the join: nothing was restarted
    time.sleep(settle + 1.0)
    history = fleet.history()
    after = {i.member: i.pid for i in history.live("worker")}
    assert after == before, f"children restarted although INDEX/COUNT did not change: {before} -> {after}"
    assert all(pid_alive(pid) for pid in after.values())
    assert len(history.of("worker")) == 2, [(i.member, i.index, i.count) for i in history.of("worker")]
