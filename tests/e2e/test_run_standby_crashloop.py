"""Singleton extras: ``standby: true`` runs followers with LEADER=0 and
restarts them when leadership changes; a leader whose child crash-loops
gives the role up so a healthy member takes over."""

from __future__ import annotations

import sys

import pytest

from .conftest import TTL, WORKER, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.etcd]


def test_standby_followers_run_with_leader_0_and_switch_on_failover(fleet):
    config = fleet.write_config({"db": fleet.worker_role("singleton", standby=True)})
    fleet.start_many(2, config)

    def roles_by_member():
        live = fleet.history().live("db")
        return {i.member: i.leader for i in live} if len(live) == 2 else None

    state = wait_for(roles_by_member, 30, "a primary and a standby")
    assert sorted(state.values()) == [False, True]
    primary = next(m for m, lead in state.items() if lead)
    standby = next(m for m, lead in state.items() if not lead)
    old_standby_pid = next(i.pid for i in fleet.history().live("db") if i.member == standby)
    fleet.members[primary].kill()

    def promoted():
        live = [i for i in fleet.history().live("db") if i.member == standby]
        return live and live[0].leader and live[0]

    new = wait_for(promoted, TTL + 10, "the standby promoted to LEADER=1")
    assert new.pid != old_standby_pid, "the standby child must be restarted with LEADER=1"
    old = next(i for i in fleet.history().of("db") if i.pid == old_standby_pid)
    assert old.end is not None and old.end <= new.start


def test_crash_looping_leader_resigns_and_a_healthy_member_takes_over(fleet):
    command = ["sh", "-c", f'if [ "$MEMBER_ID" = m0 ]; then exit 3; fi; exec {sys.executable} {WORKER}']
    role = fleet.worker_role("singleton", command=command, start_retries=1,
                             backoff={"initial": "0.1s", "max": "0.2s"})
    config = fleet.write_config({"lead": role})
    bad = fleet.start("m0", config)
    bad.wait_output("elected leader", timeout=30)
    fleet.start("m1", config)
    bad.wait_output("resigning so another member takes over", timeout=30)
    started = wait_for(lambda: [i for i in fleet.history().live("lead") if i.member == "m1"], 30,
                       "m1 running the role")
    assert started[0].leader
    assert bad.running(), "a failed role must not bring the supervisor down"
