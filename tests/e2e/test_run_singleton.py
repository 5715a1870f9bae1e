"""``supervisor run`` with a singleton role: never two leaders' children alive at
once, failover after a SIGKILLed leader within TTL + 1 s with a larger
LEADER_TOKEN, and a frozen (SIGSTOP) leader whose child is gone before the new
leader's child starts and who comes back as a follower."""

from __future__ import annotations

import time

import pytest

from .conftest import TTL, pid_alive, wait_for, wait_pids_gone

pytestmark = [pytest.mark.slow, pytest.mark.etcd]


def leader_children(fleet):
    return [i for i in fleet.history().of("lead") if i.leader]


def current_leader(fleet, timeout: float, newer_than: int = 0):
    """Wait for a live leader child with a token above ``newer_than``."""

    def check():
        live = [i for i in leader_children(fleet) if i.end is None and (i.token or 0) > newer_than]
        return live[-1] if live else None

    return wait_for(check, timeout, f"a leader child with LEADER_TOKEN > {newer_than}")


def assert_one_leader_at_a_time(fleet) -> None:
    """From the children's own records: leader intervals never overlap. A child
    killed with SIGKILL wrote no stop line; its end is when it was first seen
    dead (an upper bound), so this check errs on the strict side."""
    history = fleet.history()
    leaders = [i for i in history.of("lead") if i.leader]
    for pos, a in enumerate(leaders):
        for b in leaders[pos + 1:]:
            assert not a.overlaps(b), f"two leaders at once: {a} / {b}"
    tokens = [i.token for i in sorted(leaders, key=lambda i: i.start)]
    assert tokens == sorted(set(tokens)), f"LEADER_TOKEN not strictly increasing: {tokens}"


def test_singleton_failover_after_sigkill(fleet):
    config = fleet.write_config({"lead": fleet.worker_role("singleton")})
    fleet.start_many(3, config)
    tokens = []
    for _ in range(2):
        leader = current_leader(fleet, timeout=30, newer_than=tokens[-1] if tokens else 0)
        tokens.append(leader.token)
        supervisor = fleet.members[leader.member]
        killed_at = supervisor.kill()
        assert not wait_pids_gone([leader.pid], 1.0), "the leader's child outlived its supervisor by 1s"
        successor = current_leader(fleet, timeout=TTL + 10, newer_than=leader.token)
        failover = successor.start - killed_at
        assert failover <= TTL + 1.0, f"failover took {failover:.2f}s (ttl {TTL}s)"
        assert successor.member != leader.member
    tokens.append(successor.token)
    assert tokens == sorted(set(tokens))
    assert_one_leader_at_a_time(fleet)
    # followers never ran the command (no standby)
    assert all(i.leader for i in fleet.history().of("lead"))


def test_frozen_leader_is_stopped_before_the_next_leader_starts(fleet):
    config = fleet.write_config({"lead": fleet.worker_role("singleton")})
    first = fleet.start("m0", config)
    leader = current_leader(fleet, timeout=30)
    assert leader.member == "m0"
    second = fleet.start("m1", config)
    second.wait_output("joined cluster", timeout=30)
    wait_for(lambda: fleet.candidates("lead") == 2, 15, "m1 to campaign behind m0")

    paused_at = first.pause()
    successor = current_leader(fleet, timeout=TTL + 10, newer_than=leader.token)
    assert successor.member == "m1"
    history = fleet.history()
    old = next(i for i in history.of("lead") if i.pid == leader.pid)
    # the watchdog helper stopped the frozen leader's child (it ran the SIGTERM
    # handler: a stop record) before the lease could expire
    assert old.end is not None and old.end < successor.start, (
        f"old leader child (pid {old.pid}) end {old.end} vs new leader start {successor.start}")
    assert successor.start - paused_at <= TTL + 1.5
    assert time.time() - paused_at < TTL + 10
    wait_for(lambda: time.time() - paused_at > TTL + 1.0, TTL + 2, "the pause to outlast the TTL")

    # thawed: it must notice it lost the lease and come back as a follower
    first.resume()
    first.wait_output("rejoining the cluster", timeout=10)
    wait_for(lambda: fleet.backend().get(fleet.member_key("m0")), 10, "m0's member key again")
    wait_for(lambda: fleet.candidates("lead") == 2, 15, "the thawed m0 to campaign behind m1 again")
    assert first.running()
    m0_leaders = [i for i in fleet.history().of("lead", member="m0") if i.leader]
    assert [i.pid for i in m0_leaders] == [leader.pid], "the thawed member started a second leader"
    assert pid_alive(successor.pid)
    assert_one_leader_at_a_time(fleet)

    # and it is a working follower: when m1 leaves, m0 takes over with a larger token
    second.term()
    assert second.wait(10) == 0
    again = current_leader(fleet, timeout=10, newer_than=successor.token)
    assert again.member == "m0"
    assert_one_leader_at_a_time(fleet)
