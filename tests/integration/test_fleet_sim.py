"""bench/fleet_sim.py end to end: a small fleet of real members (fake children)
against its own etcd, every scenario once, the JSON line and the invariants."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from etcdvisor.process.child import ChildState
from etcdvisor.process.spawn import ChildSpec, ChildVars
from etcdvisor.testing.fake_process import FakeChild, FakeProcessLayer

SIM = Path(__file__).resolve().parents[2] / "bench" / "fleet_sim.py"


@pytest.mark.slow
def test_fleet_sim_runs_every_scenario_and_keeps_the_invariants(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(SIM), "--members", "6", "--procs", "2", "--leaves", "1", "--crashes", "1",
         "--ttl", "5", "--settle", "0.5", "--quiet", "1", "--rollout", "0.2", "--roles", "sharded,singleton"],
        capture_output=True, text=True, timeout=400, cwd=tmp_path)
    assert proc.stdout.strip(), proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert proc.returncode == 0, (result, proc.stderr[-3000:])
    assert result["bench"] == "fleet_sim" and result["members"] == 6 and result["settle_s"] == 0.5
    assert result["invariants"] == {"overlaps": 0, "uncovered": 0, "leaders_max": 1}
    for name in ("leave", "crash", "rollout", "cold_start"):
        scenario = result["scenarios"][name]
        for key in ("converge_p50_s", "converge_p99_s", "requests", "writes", "watch_events", "starts", "stops"):
            assert isinstance(scenario[key], (int, float)), (name, key, scenario)
        assert scenario["timeouts"] == 0
    assert result["scenarios"]["cold_start"]["starts"] >= 7  # 6 sharded children and a leader
    # where the watch events go, as the members received them: every remaining member sees the
    # leaver's shard key deleted; the simulator's own trace watch is not counted as the fleet's
    leave = result["scenarios"]["leave"]
    assert leave["watch_events_by_key"].get("del roles/worker/shard/* (watch roles/worker/shard/)", 0) >= 1, leave
    assert isinstance(leave["watch_events_etcd"], (int, float)), leave
    # a crash is seen only when the lease expires (ttl 5 s), a clean leave at once
    assert result["scenarios"]["crash"]["converge_p50_s"] > 3.0
    assert result["quiet"]["keepalives_per_member_s"] > 0


def test_a_fake_run_is_a_record_that_stops_in_a_few_ms():
    events = []
    layer = FakeProcessLayer(events.append, stop_delay=0.005)
    manager = layer.manager("m1")()
    slot = manager.new_slot(ChildSpec("worker[0]", ("sleep", "1"), {"INDEX": "0", "COUNT": "1", "SECRET": "x"}))
    manager.tick(100.0)
    child = slot.child
    assert isinstance(child, FakeChild) and child.state is ChildState.RUNNING
    assert [(e.event, e.member, e.name, e.env) for e in events] == [
        ("start", "m1", "worker[0]", {"INDEX": "0", "COUNT": "1"})]
    slot.set_desired(None)
    manager.tick(100.0)
    assert child.alive and manager.next_deadline() == pytest.approx(100.005)
    manager.tick(100.005)
    assert slot.child is None and events[-1].event == "stop" and events[-1].pid == events[0].pid


def test_a_fake_run_records_the_typed_variables_the_supervisor_sets():
    # sharded and leader children carry ROLE/INDEX/COUNT/LEADER in ChildSpec.vars, not in
    # env: without them the simulator sees no role and no partition and never converges
    events = []
    manager = FakeProcessLayer(events.append).manager("m1")()
    manager.new_slot(ChildSpec("worker[2]", ("sleep", "1"), {"SECRET": "x"},
                               vars=ChildVars(role="worker", member_id="m1", index=2, count=5, epoch=7)))
    manager.new_slot(ChildSpec("leader", ("sleep", "1"), {}, vars=ChildVars(role="leader", leader=True)))
    manager.tick(100.0)
    assert sorted((e.name, tuple(sorted(e.env.items()))) for e in events) == [
        ("leader", (("LEADER", "1"), ("ROLE", "leader"))),
        ("worker[2]", (("COUNT", "5"), ("EPOCH", "7"), ("INDEX", "2"), ("MEMBER_ID", "m1"), ("ROLE", "worker")))]


def test_a_lease_bound_fake_run_stops_at_its_lease_term():
    events = []
    manager = FakeProcessLayer(events.append).manager("m1")()
    manager.set_lease_deadlines(105.0, 107.0)
    slot = manager.new_slot(ChildSpec("api", ("sleep", "1"), {}, lease_bound=True))
    manager.tick(100.0)
    assert slot.child is not None and manager.next_deadline() == 105.0
    manager.tick(105.0)
    assert slot.child is not None and slot.child.stop_requested
    manager.tick(105.1)
    assert slot.child is None and [e.event for e in events] == ["start", "stop"]


def test_a_late_loop_records_the_lease_kill_at_its_deadline_as_the_watchdog_would():
    events = []
    manager = FakeProcessLayer(events.append).manager("m1")()
    manager.set_lease_deadlines(105.0, 107.0)
    slot = manager.new_slot(ChildSpec("api", ("sleep", "1"), {}, lease_bound=True))
    manager.tick(100.0)
    manager.tick(130.0)  # the loop was starved past term_at and kill_at
    assert slot.child is None and [(e.event, e.t) for e in events][-1] == ("stop", 107.0)
