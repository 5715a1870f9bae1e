"""Issue 9 end to end: fenced hand-off (join order with ``processes``) and
fixed shards (per-shard and per-member children) under clean leave, SIGKILL
and SIGSTOP of a member, checked on the children's own start/stop records by
:mod:`.shard_history`."""

from __future__ import annotations

import os
import time

import pytest

from .conftest import TTL, wait_for, wait_pids_gone
from .shard_history import (
    assert_exact_cover,
    assert_kept_pids,
    assert_no_intersecting_overlap,
    is_exact_cover,
    parts_of,
)

pytestmark = [pytest.mark.etcd]

SETTLE = "0.3s"


def settled(fleet, role: str, count: int, members: set[str], timeout: float) -> float:
    """Wait for an exact cover of 0..count-1 by ``members``; return a moment
    after it (the cover is re-checked at that moment)."""
    wait_for(lambda: is_exact_cover(fleet.history(), role, count, members), timeout,
             f"{role}: exact cover of {count} by {sorted(members)}")
    time.sleep(0.2)
    t = time.time()
    assert_exact_cover(fleet.history(), role, count, t)
    return t


def test_fenced_join_order_with_processes(fleet):
    role = fleet.worker_role("sharded", settle=SETTLE, processes=2, env={
        "WORK_RECORD": str(fleet.record_path), "WORK_INTERVAL": "1000", "WORK_STOP_DELAY": "0.2"})
    config = fleet.write_config({"worker": role})
    members = fleet.start_many(3, config)
    ids = {m.id for m in members}
    settled(fleet, "worker", 6, ids, timeout=90)

    members[0].term()
    assert members[0].wait(10) == 0
    ids.discard(members[0].id)
    settled(fleet, "worker", 4, ids, timeout=45)

    own = [i.pid for i in fleet.history().live("worker") if i.member == members[1].id]
    members[1].kill()
    assert not wait_pids_gone(own, timeout=5.0)
    ids.discard(members[1].id)
    settled(fleet, "worker", 2, ids, timeout=TTL + 45)

    history = fleet.history()
    assert_no_intersecting_overlap(history, "worker")
    counts = {i.count for i in history.of("worker")}
    assert counts == {6, 4, 2}, counts


@pytest.mark.parametrize("children", ["per-shard", "per-member"])
def test_fixed_shards_leave_kill_and_freeze(fleet, children):
    role = fleet.worker_role("sharded", settle=SETTLE, shards=8, children=children)
    config = fleet.write_config({"worker": role})
    members = fleet.start_many(4, config)
    ids = {m.id for m in members}
    t0 = settled(fleet, "worker", 8, ids, timeout=90)
    for child in fleet.history().live("worker"):
        if children == "per-member":
            assert child.env["shards"] and child.env.get("index") is None
        else:
            assert child.env.get("shards") is None and int(child.env["count"]) == 8

    # clean leave: only the leaver's shards move, the others keep their pids
    members[0].term()
    assert members[0].wait(10) == 0
    ids.discard(members[0].id)
    t1 = settled(fleet, "worker", 8, ids, timeout=45)
    if children == "per-shard":
        restarted = assert_kept_pids(fleet.history(), "worker", t0, t1, ids)
        moved = len([p for i in fleet.history().live_at(t0, "worker") if i.member == members[0].id
                     for p in parts_of(i)])
        assert restarted == moved, (restarted, moved)

    # SIGSTOP: the watchdog stops its children before its lease can expire; the
    # others take its shards only after that
    frozen = members[1]
    frozen.pause()
    ids.discard(frozen.id)
    t2 = settled(fleet, "worker", 8, ids, timeout=TTL + 45)
    frozen.resume()
    ids.add(frozen.id)
    settled(fleet, "worker", 8, ids, timeout=TTL + 45)

    # SIGKILL: children die with it, the lease expires, the shards move
    members[2].kill()
    ids.discard(members[2].id)
    t3 = settled(fleet, "worker", 8, ids, timeout=TTL + 45)

    history = fleet.history()
    assert_no_intersecting_overlap(history, "worker")
    for t in (t0, t1, t2, t3):
        assert_exact_cover(history, "worker", 8, t)
    assert {int(i.count) for i in history.of("worker")} == {8}


def test_checker_catches_overlap_and_gaps():
    """The checker itself: intersecting lives are reported, disjoint ones are not."""
    from .conftest import History

    def rec(event, pid, t, **env):
        return {"event": event, "pid": pid, "t": t, "role": "w", "member_id": f"m{pid}", **env}

    ok = History([rec("start", 1, 0.0, index="0", count="2"), rec("start", 2, 0.0, index="1", count="2"),
                  rec("stop", 1, 5.0), rec("stop", 2, 5.0), rec("start", 3, 5.01, index="0", count="1")], {})
    assert_no_intersecting_overlap(ok, "w")  # raises on an overlap
    assert is_exact_cover(ok, "w", 2, t=1.0) and not is_exact_cover(ok, "w", 2, t=6.0)
    assert is_exact_cover(ok, "w", 1, t=6.0)
    bad = History([rec("start", 1, 0.0, index="0", count="2"), rec("stop", 1, 5.0),
                   rec("start", 2, 4.9, index="1", count="3")], {})
    with pytest.raises(AssertionError, match="intersecting"):
        assert_no_intersecting_overlap(bad, "w")
    shards = History([rec("start", 1, 0.0, shards="1,2", count="8"), rec("start", 2, 1.0, index="2", count="8")], {})
    with pytest.raises(AssertionError):
        assert_no_intersecting_overlap(shards, "w")


@pytest.mark.slow
@pytest.mark.timeout(300)  # a minute of churn, then settling 8+ members on a loaded machine
def test_random_churn_keeps_partitions_exclusive(fleet):
    """8+ members, 60 s (ETCDVISOR_CHURN_SECONDS) of random clean leaves, SIGKILLs, SIGSTOP/SIGCONT and
    joins, with a join-order role and a fixed-shard role side by side."""
    import random

    rng = random.Random(int.from_bytes(os.urandom(4), "big"))
    config = fleet.write_config({
        "joined": fleet.worker_role("sharded", settle=SETTLE),
        "fixed": fleet.worker_role("sharded", settle=SETTLE, shards=16),
    })
    running = {m.id: m for m in fleet.start_many(8, config)}
    settled(fleet, "fixed", 16, set(running), timeout=90)
    frozen: dict[str, float] = {}
    serial = 8
    # the full minute of churn; ETCDVISOR_CHURN_SECONDS shortens it for a quick local run
    end = time.monotonic() + float(os.environ.get("ETCDVISOR_CHURN_SECONDS", "60"))
    actions = []
    while time.monotonic() < end:
        for member_id, until in list(frozen.items()):
            if time.monotonic() >= until:
                running[member_id].resume()
                del frozen[member_id]
        action = rng.choice(["term", "kill", "pause", "join"] if len(running) > 6 else ["join"])
        if len(running) >= 10:
            action = rng.choice(["term", "kill", "pause"])
        victim = rng.choice(sorted(set(running) - set(frozen)))
        if action == "term":
            running.pop(victim).term()
        elif action == "kill":
            running.pop(victim).kill()
        elif action == "pause":
            running[victim].pause()
            frozen[victim] = time.monotonic() + rng.uniform(0.5, 6.0)
        else:
            new = fleet.start(f"m{serial}", config)
            running[new.id] = new
            serial += 1
        actions.append(action)
        time.sleep(rng.uniform(0.5, 2.5))
    for member_id in frozen:
        running[member_id].resume()
    settled(fleet, "fixed", 16, set(running), timeout=90)
    settled(fleet, "joined", len(running), set(running), timeout=90)
    history = fleet.history()
    assert_no_intersecting_overlap(history, "fixed")
    assert_no_intersecting_overlap(history, "joined")
    assert len(history.of("fixed")) > 16, actions


def test_status_shows_the_assignment_and_a_hand_off_in_progress(fleet):
    import json

    from etcdvisor.config import load
    from etcdvisor.status.read import gather
    from etcdvisor.status.render import render_text

    from .harness_roles import cli

    # m0's children take 12 s to stop: the hand-off stays open long enough to be seen on a
    # loaded machine (member records show a transition within their 2 s hold)
    role = fleet.worker_role("sharded", settle=SETTLE, shards=4, stop_timeout="15s", env={
        "WORK_RECORD": str(fleet.record_path), "WORK_INTERVAL": "1000", "WORK_STOP_DELAY": "12"})
    config = fleet.write_config({"worker": role}, ttl=20)
    loaded = load(str(config))
    fleet.start("m0", config)
    settled(fleet, "worker", 4, {"m0"}, timeout=90)
    fleet.start("m1", config)

    def handoff_in_status():
        """One snapshot (what `supervisor status` reads and prints): m1 waits for the
        coordinator's start grant, and m0 (first in join order: it grants) says why."""
        doc = gather(fleet.backend(), fleet.cluster, loaded)
        role_doc = doc["roles"]["worker"]
        by_member = {a["member"]: a for a in role_doc["assignments"]}
        m0, m1 = by_member.get("m0"), by_member.get("m1")
        if not (m0 and m1 and m1["waiting"]):
            return None
        reasons = (m0["coordinator"] or {}).get("waiting") or []
        if not any(w.startswith("m1:") and "waits for m0's child" in w for w in reasons):
            return None
        return doc

    doc = wait_for(handoff_in_status, 60, "m1 waiting and the coordinator m0 naming m0's children in status")
    role_doc = doc["roles"]["worker"]
    (m1,) = [a for a in role_doc["assignments"] if a["member"] == "m1"]
    assert all("the coordinator's start grant" in w for w in m1["waiting"]), m1["waiting"]
    assert role_doc["published"]["members"] == ["m0", "m1"] and role_doc["published"]["shards"] == 4
    assert role_doc["alive"]["m0"], role_doc["alive"]
    text = render_text(doc)
    assert "published assignment" in text and "hand-off (coordinator m0): m1:" in text, text
    result = cli("status", "-c", str(config), "--json", timeout=90)  # the verb prints the same document
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    assert json.loads(result.stdout)["roles"]["worker"]["published"]["members"] == ["m0", "m1"]
    settled(fleet, "worker", 4, {"m0", "m1"}, timeout=90)

    def owned_in_status():  # member records are rewritten at most once a second, off the loop
        doc = gather(fleet.backend(), fleet.cluster, loaded)["roles"]["worker"]
        return sorted(s for a in doc["assignments"] for s in (a["shards"] or [])) == [0, 1, 2, 3]

    wait_for(owned_in_status, 30, "status showing shards 0..3 owned once each")
    assert_no_intersecting_overlap(fleet.history(), "worker")
