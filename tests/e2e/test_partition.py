"""A leader cut off from etcd (its traffic blackholed by a TCP proxy, the
process itself running): it stops its lease-bound child before its lease can
expire, the other member takes over only after that, and when the network
comes back the cut-off member rejoins as a follower."""

from __future__ import annotations

import time

import pytest

from etcdvisor.testing.proxy import TcpProxy

from .conftest import TTL, wait_for
from .test_run_singleton import assert_one_leader_at_a_time, current_leader

pytestmark = [pytest.mark.slow, pytest.mark.etcd]


def test_partitioned_leader_stops_before_lease_expiry_and_rejoins(fleet):
    proxy = TcpProxy.to_url(fleet.etcd_url)
    try:
        config = fleet.write_config({"lead": fleet.worker_role("singleton")})
        cut = fleet.start("m0", config, endpoints=proxy.url)
        leader = current_leader(fleet, timeout=30)
        assert leader.member == "m0"
        other = fleet.start("m1", config)
        other.wait_output("joined cluster", timeout=30)
        wait_for(lambda: fleet.candidates("lead") == 2, 15, "m1 to campaign behind m0")

        cut_at = time.time()
        proxy.blackhole()
        successor = current_leader(fleet, timeout=TTL + 10, newer_than=leader.token)
        assert successor.member == "m1"
        old = next(i for i in fleet.history().of("lead") if i.pid == leader.pid)
        assert old.end is not None and old.end <= successor.start, "old leader's child still ran"
        # stopped by the supervisor itself (a graceful stop record), within the TTL
        assert old.end_recorded, "the cut-off leader's child was not stopped gracefully"
        assert old.end - cut_at < TTL, f"child stopped {old.end - cut_at:.2f}s after the cut (ttl {TTL})"
        assert cut.running(), "the cut-off supervisor must keep running and wait for etcd"
        # the stop names its deadline, the child and the age of the last confirmed keepalive
        assert "lead: lease term deadline reached (SIGTERM, role lead, pid" in cut.output()
        assert "last confirmed keepalive was sent" in cut.output()

        proxy.restore()
        cut.wait_output("rejoin", timeout=20)
        wait_for(lambda: fleet.candidates("lead") == 2, 15, "the rejoined m0 to campaign behind m1")
        live = [i for i in fleet.history().of("lead") if i.end is None and i.leader]
        assert [i.member for i in live] == ["m1"], f"after rejoin the leaders are {live}"
        assert_one_leader_at_a_time(fleet)
    finally:
        proxy.close()
