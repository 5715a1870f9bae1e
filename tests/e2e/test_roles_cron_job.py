"""``supervisor run`` with cron and job roles, and ``after:`` barriers, on real etcd.

Histories come from the children's own records (see ``harness_roles``):

* cron ``@every 2s`` on 3 supervisors: every tick between the first and the last
  one observed runs exactly once across the cluster (by ``SCHEDULED_TIME``),
  also when the leader's supervisor is SIGKILLed midway (ticks due during the
  failover run late on the new leader, whose ``LEADER_TOKEN`` is larger);
* a job runs once across 3 members, not again after a restart, again once after
  ``supervisor rerun``, again once after a spec change; a role with
  ``after: [job]`` never starts before the job's child recorded its end.
"""

from __future__ import annotations

import json
import time

import pytest

from .conftest import TTL, wait_for
from .harness_roles import cli, duplicates, missing_ticks, recorder, status_json, tick_time  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.etcd]

PERIOD = 2.0


def cron_config(fleet, recorder):
    return fleet.write_config({"tick": recorder.role("cron", schedule=f"@every {PERIOD:g}s", sleep=0.2)})


def wait_ticks(recorder, count: int, timeout: float, after: float = 0.0) -> list[dict]:
    return wait_for(lambda: len([r for r in recorder.starts("tick") if r["t"] > after]) >= count and
                    recorder.starts("tick"), timeout, f"{count} cron runs")


def skipped_ticks(fleet) -> set[float]:
    """Ticks the store records ``skipped`` (concurrency ``forbid``: a newer tick came due
    while a run was still active, e.g. a new leader's late catch-up run on a loaded
    machine): accounted for, not lost."""
    from etcdvisor.config.schedule import parse_tick_id
    from etcdvisor.coord.keys import ClusterKeys

    prefix = ClusterKeys(fleet.cluster).ticks("tick")
    found = set()
    for kv in fleet.backend().get_prefix(prefix).kvs:
        if json.loads(kv.value).get("state") == "skipped":  # (a manual trigger's id is never skipped)
            found.add(round(parse_tick_id(kv.key[len(prefix):]).timestamp(), 3))
    return found


def assert_each_tick_once(starts: list[dict], fleet=None) -> list[float]:
    """No tick ran twice, none between the first and last observed is missing (with
    ``fleet``: unless the store records it skipped by the concurrency policy), none ran
    before its scheduled time. Returns the tick times."""
    ticks = [tick_time(r) for r in starts]
    assert not duplicates(r["scheduled_time"] for r in starts), \
        f"ticks run more than once: {duplicates(r['scheduled_time'] for r in starts)}"
    gaps = missing_ticks(ticks, PERIOD)
    if gaps and fleet is not None:
        gaps = [t for t in gaps if t not in skipped_ticks(fleet)]
    assert not gaps, f"ticks never run: {gaps} (ran: {sorted(ticks)})"
    early = [(r["scheduled_time"], r["t"]) for r in starts if r["t"] < tick_time(r) - 0.05]
    assert not early, f"runs started before their scheduled time: {early}"
    return ticks


def test_cron_every_tick_runs_once_across_three_members(fleet, recorder):
    fleet.start_many(3, cron_config(fleet, recorder))
    wait_ticks(recorder, 9, timeout=60)
    starts = recorder.starts("tick")
    ticks = assert_each_tick_once(starts)
    assert len(ticks) >= 9
    assert len({r["member_id"] for r in starts}) == 1, "leadership moved without any fault"
    # every run but the last (maybe still in its 0.2 s) has written its end line
    wait_for(lambda: {r["scheduled_time"] for r in starts[:-1]}
             <= {r["scheduled_time"] for r in recorder.ends("tick") if r["exit"] == 0}, 10,
             "every run before the last to finish with exit 0")


def test_cron_leader_sigkilled_midway_no_duplicate_no_gap(fleet, recorder):
    fleet.start_many(3, cron_config(fleet, recorder))
    before = wait_ticks(recorder, 3, timeout=45)
    leader, token = before[-1]["member_id"], int(before[-1]["leader_token"])
    # kill just after a run started: far from the next claim, and the run (0.2s) is over
    seen = len(before)
    wait_for(lambda: len(recorder.starts("tick")) > seen, 10, "the next tick")
    wait_for(lambda: len(recorder.ends("tick")) >= len(recorder.starts("tick")), 10, "that run to end")
    killed_at = fleet.members[leader].kill()
    # the lease expires within TTL; then the new leader catches up and keeps going
    wait_for(lambda: len([r for r in recorder.starts("tick") if r["t"] > killed_at]) >= 5,
             TTL + 30, "5 runs after the failover")
    time.sleep(0.5)  # the contract: no tick twice (a short while for a racing duplicate to show)
    starts = recorder.starts("tick")
    assert_each_tick_once(starts, fleet)
    after = [r for r in starts if r["t"] > killed_at]
    assert {r["member_id"] for r in after} and leader not in {r["member_id"] for r in after}
    assert all(int(r["leader_token"]) > token for r in after), \
        f"new leader's LEADER_TOKEN not larger than {token}: {[r['leader_token'] for r in after]}"
    # the ticks due while nobody led ran late, not never
    late = [round(r["t"] - tick_time(r), 1) for r in after if r["t"] - tick_time(r) > 1.0]
    assert late, "no tick was run late after the failover (expected catch-up of missed ticks)"
    print(f"cron failover: killed {leader} (token {token}); {len(starts)} ticks, new leader "
          f"{after[0]['member_id']} token {after[0]['leader_token']}, late by {late} s")


# --- job ------------------------------------------------------------------------------

def job_roles(recorder, version: str = "1") -> dict:
    return {
        "migrate": recorder.role("job", sleep=2.0, env={"VERSION": version}),
        # settle 0: nothing but the barrier holds the dependents back
        "api": recorder.role("sharded", after=["migrate"], restart="never", settle=0),
    }


def job_leader_ready(config) -> bool:
    """The job role has a leader that has looked at the job record."""
    doc = status_json(config)
    role = doc["roles"].get("migrate") or {}
    return bool(role.get("election")) and any(a["state"] == "leader" for a in role["assignments"])


def restart_all(fleet, config, ids=("m0", "m1", "m2")) -> float:
    """SIGTERM every supervisor, wait for them, start them again; returns the
    time just before the new ones started."""
    for member_id in ids:
        fleet.members[member_id].term()
    for member_id in ids:
        assert fleet.members[member_id].wait(15) == 0
    restarted_at = time.time()
    for member_id in ids:
        fleet.start(member_id, config)
    return restarted_at


def dependents_ran(recorder, since: float) -> bool:
    """The 'after' role started on all 3 members after ``since``."""
    return len({r["member_id"] for r in recorder.starts("api") if r["t"] > since}) == 3


def assert_after_job(recorder, since: float, job_end: dict) -> None:
    early = [(d["member_id"], d["t"]) for d in recorder.starts("api") if since < d["t"] < job_end["t"]]
    assert not early, f"'after: [migrate]' children started before the job ended at {job_end['t']}: {early}"


def test_job_once_barrier_restart_rerun_and_spec_change(fleet, recorder):
    config = fleet.write_config(job_roles(recorder))
    fleet.start_many(3, config)

    # once across three members; dependents only after the job's success
    wait_for(lambda: dependents_ran(recorder, 0) and recorder.ends("migrate"), 60,
             "the job to end and the 'after' role to run on 3 members")
    job_starts, job_ends = recorder.starts("migrate"), recorder.ends("migrate")
    assert len(job_starts) == 1 and len(job_ends) == 1 and job_ends[0]["exit"] == 0, job_starts
    assert job_starts[0]["leader_token"]
    assert_after_job(recorder, 0, job_ends[0])

    # a restart of every supervisor does not run it again
    restarted_at = restart_all(fleet, config)
    wait_for(lambda: dependents_ran(recorder, restarted_at), 60, "the 'after' role after the restart")
    wait_for(lambda: job_leader_ready(config), 30, "a job leader after the restart")
    time.sleep(0.5)  # the contract: the leader, having read the job record, does not run it
    assert len(recorder.starts("migrate")) == 1, "the job ran again after a restart"

    # rerun: once more, exactly once
    result = cli("rerun", "-c", str(config), "migrate")
    assert result.returncode == 0, result.stderr
    assert b"deleted job record" in result.stdout
    wait_for(lambda: len(recorder.ends("migrate")) >= 2, 30, "the rerun to finish")
    wait_for(lambda: status_json(config)["roles"]["migrate"]["job"]["state"] == "succeeded", 15,
             "the rerun recorded as succeeded")
    assert len(recorder.starts("migrate")) == 2, recorder.starts("migrate")

    # a changed spec (env) runs it again; dependents wait for the new run
    new_config = fleet.write_config(job_roles(recorder, version="2"))
    restarted_at = restart_all(fleet, new_config)
    wait_for(lambda: dependents_ran(recorder, restarted_at) and len(recorder.ends("migrate")) >= 3, 60,
             "the changed job to end and the 'after' role to run again")
    time.sleep(0.5)  # the contract: the changed job runs once (a short while to show no second run)
    starts, ends = recorder.starts("migrate"), recorder.ends("migrate")
    assert len(starts) == 3 and len(ends) == 3, starts
    assert {s["pid"] for s in starts} == {e["pid"] for e in ends}
    assert_after_job(recorder, restarted_at, ends[2])
    tokens = [int(s["leader_token"]) for s in starts]
    assert all(t > 0 for t in tokens), tokens
