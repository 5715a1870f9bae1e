"""etcd goes away under a running member for longer than the lease (issue 19, 1.1): the
member says so once per backoff step, not once per attempt, stops its lease-bound children
at lease expiry, keeps retrying, and rejoins with a new lease when etcd is back."""

from __future__ import annotations

import os
import re

import pytest

from .conftest import Fleet, pid_alive, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.etcd]


def test_member_says_etcd_is_gone_once_per_backoff_step_and_rejoins(private_etcd, tmp_path):
    fleet = Fleet(tmp_path, private_etcd.url, "gone-" + os.urandom(4).hex())
    try:
        config = fleet.write_config({"shard": fleet.worker_role("sharded", settle="0.2s")}, ttl=4)
        member = fleet.start("m0", config)
        wait_for(lambda: len(fleet.history().live("shard")) == 1, 30, "the worker")
        first = fleet.history().live("shard")[0].pid
        private_etcd.stop()
        wait_for(lambda: not fleet.history().live("shard"), 15, "the worker stopped at lease expiry")
        said = re.compile(r"etcd at http://127\.0\.0\.1:\d+ unreachable since \d\d:\d\d:\d\dZ; "
                          r"children stopped at lease expiry; retrying every \d+s")
        wait_for(lambda: said.search(member.output()), 20, "the unreachable line after lease expiry")
        wait_for(lambda: member.output().count("unreachable since") >= 3, 20, "a line per backoff step")
        out = member.output()
        assert out.count("cannot write the alive record") <= 1, out
        assert out.count("unreachable since") <= 5, "one line per backoff step, not per attempt"
        private_etcd.start()
        member.wait_output("reachable again after", 30)
        wait_for(lambda: len(fleet.history().live("shard")) == 1, 30, "the worker again")
        assert fleet.history().live("shard")[0].pid != first
        assert "etcd at" in member.output() and "reachable again after" in member.output()
    finally:
        fleet.close()


def _record(fleet, member_id):
    from etcdvisor.coord.records import MEMBER

    kv = fleet.backend().get(fleet.member_key(member_id))
    return MEMBER.decode(kv.value) if kv is not None else None


def test_a_member_of_a_previous_run_known_dead_is_not_waited_for_after_an_etcd_restart(private_etcd, tmp_path):
    """The quickstart's second start: etcd comes back with the lease of a member that
    died meanwhile (restored with its TTL). A new member on the same host sees that
    member's pids are gone, revokes its lease and starts at once with COUNT=1 instead
    of counting the dead member for a whole TTL."""
    fleet = Fleet(tmp_path, private_etcd.url, "stale-" + os.urandom(4).hex())
    try:
        config = fleet.write_config({"shard": fleet.worker_role("sharded", settle="0.2s")}, ttl=15)
        old = fleet.start("old", config)
        wait_for(lambda: len(fleet.history().live("shard")) == 1, 30, "the old member's worker")
        wait_for(lambda: (_record(fleet, "old") or {}).get("watchdog"), 10, "the record names the watchdog")
        private_etcd.stop()
        old.term()
        assert old.wait(30) == 0  # it could not revoke its lease: etcd was down
        wait_for(lambda: not fleet.history().live("shard") and not old.descendants(), 10, "old children gone")
        private_etcd.start()
        restored = fleet.backend().get(fleet.member_key("old"))
        assert restored is not None and fleet.backend().lease_ttl(restored.lease) > 5, "etcd restored its lease"
        new = fleet.start("new", config)
        wait_for(lambda: len(fleet.history().live("shard")) == 1, 10, "the new member's worker, long before 15s")
        first = [r for r in fleet.records() if r.get("member_id") == "new" and r.get("event") == "start"][0]
        assert first["count"] == "1", "the dead member was counted"
        assert "member old of a previous run (host" in new.output() and "revoked its lease" in new.output()
        assert fleet.backend().get(fleet.member_key("old")) is None
    finally:
        fleet.close()


def test_a_restart_with_the_same_member_id_after_a_crash_does_not_wait_for_the_old_lease(private_etcd, tmp_path):
    fleet = Fleet(tmp_path, private_etcd.url, "same-" + os.urandom(4).hex())
    try:
        config = fleet.write_config({"shard": fleet.worker_role("sharded", settle="0.2s")}, ttl=15)
        first = fleet.start("m1", config)
        wait_for(lambda: len(fleet.history().live("shard")) == 1, 30, "the worker")
        wait_for(lambda: (_record(fleet, "m1") or {}).get("watchdog"), 10, "the record names the watchdog")
        watchdog = _record(fleet, "m1")["watchdog"]
        first.kill()
        wait_for(lambda: not fleet.history().live("shard") and not pid_alive(watchdog), 10,
                 "children and watchdog gone")
        again = fleet.start("m1", config)
        wait_for(lambda: len(fleet.history().live("shard")) == 1, 10, "the worker again, long before 15s")
        assert "revoked its lease" in again.output()
    finally:
        fleet.close()


def _wait_lines(output: str, what: str) -> tuple[list[str], list[str]]:
    """The lines of the wait log for the wait ``what`` (a regex): (begun, done)."""
    begun = re.findall(r"role shard: (" + what + r") \(1\.\ds so far\)", output)
    done = re.findall(r"role shard: done waiting after (\d+\.\d)s: (" + what + r")$", output, re.M)
    return begun, done


def test_a_new_member_says_what_it_waits_for_while_a_lost_members_lease_runs_out(private_etcd, tmp_path):
    """Issue 19, 1.2: after a member is lost (here frozen: a SIGKILLed one on this host would be
    known dead and its lease revoked at once), a new member waits for its place until the
    lost member's lease expires. The lost member is the first in join order, the coordinator
    that publishes the plan and grants starts (roles/shard_coordinator.py), so the new member
    waits for the coordinator's plan: it says so (one line when the wait has lasted a second, one when
    it ends), instead of several silent seconds."""
    fleet = Fleet(tmp_path, private_etcd.url, "waits-" + os.urandom(4).hex())
    try:
        # ttl 12: the new member must join and wait while the lost one's lease still runs
        # (a member's start takes seconds on a loaded machine)
        config = fleet.write_config({"shard": fleet.worker_role("sharded", settle="0.2s")}, ttl=12)
        first = fleet.start("vm-a", config)
        wait_for(lambda: len(fleet.history().live("shard")) == 1, 30, "the first worker")
        first.pause()  # its watchdog kills the child at the lease deadline; the lease runs out
        new = fleet.start("vm-b", config)
        # the coordinator publishes the plan: until the lost one's lease expires, nobody does
        what = r"membership waits for the coordinator's plan \(joined at revision \d+\)"
        wait_for(lambda: _wait_lines(new.output(), what)[0], 30, "the wait line", on_timeout=new.output)
        wait_for(lambda: _wait_lines(new.output(), what)[1], 40, "the end of the wait", on_timeout=new.output)
        wait_for(lambda: [(i.index, i.count) for i in fleet.history().live("shard")] == [(0, 1)], 20,
                 "the new member runs 0/1")
        begun, done = _wait_lines(new.output(), what)
        assert len(begun) == 1 and len(done) == 1, new.output()  # one line each, not one per turn
        assert float(done[0][0]) >= 1.0
    finally:
        fleet.close()


def test_the_coordinator_says_what_it_waits_for_while_a_lost_members_lease_runs_out(private_etcd, tmp_path):
    """Issue 19, 1.2 with the coordinator alive: a member (not the coordinator) is lost while a
    third joins; the coordinator cannot grant the new plan's starts while the lost member's
    alive record (on its lease) still holds its child's shard, and says so, one line when the
    wait has lasted a second and one when it ends."""
    fleet = Fleet(tmp_path, private_etcd.url, "waits-" + os.urandom(4).hex())
    try:
        # ttl 12: the new member must join and wait while the lost one's lease still runs
        # (a member's start takes seconds on a loaded machine)
        config = fleet.write_config({"shard": fleet.worker_role("sharded", settle="0.2s")}, ttl=12)
        coordinator = fleet.start("vm-a", config)
        wait_for(lambda: len(fleet.history().live("shard")) == 1, 30, "the first worker")
        lost = fleet.start("vm-b", config)
        wait_for(lambda: sorted((i.index, i.count) for i in fleet.history().live("shard")) == [(0, 2), (1, 2)],
                 30, "two workers")
        lost.pause()
        fleet.start("vm-c", config)
        what = r"vm-[ac]:\d/3 waits for vm-b's (?:child|lease|kill bound)[^(]*\(1/2\)"
        wait_for(lambda: _wait_lines(coordinator.output(), what)[0], 30, "the coordinator's wait line",
                 on_timeout=coordinator.output)
        wait_for(lambda: _wait_lines(coordinator.output(), what)[1], 40, "the end of the coordinator's wait",
                 on_timeout=coordinator.output)
        wait_for(lambda: sorted((i.index, i.count) for i in fleet.history().live("shard")) == [(0, 2), (1, 2)]
                 and {i.member for i in fleet.history().live("shard")} == {"vm-a", "vm-c"}, 20,
                 "vm-a and vm-c run 0/2 and 1/2")
    finally:
        fleet.close()
