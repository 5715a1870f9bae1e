"""Slow etcd round trips (GUIDE rule 1, issue 8 item 6): with 400-800 ms
round trips between every supervisor and etcd and ``ttl: 4``, a fleet of
sharded + singleton members runs with no spurious stop or restart.

Every member talks to etcd through one :class:`TcpProxy` that delays each
direction by 200-400 ms (a real TCP path: bytes stay in order). Children
record their starts and stops; once the fleet has settled, no child may
start or stop for the whole soak (``LEASE_SOAK_SECONDS``, default 60 s).
"""

from __future__ import annotations

import os
import time

import pytest

from etcdvisor.testing.proxy import TcpProxy

from .conftest import TTL, wait_for

# a minute of soak after up to 90 s of settling through the slow proxy
pytestmark = [pytest.mark.slow, pytest.mark.etcd, pytest.mark.timeout(300)]

SOAK = float(os.environ.get("LEASE_SOAK_SECONDS", "60"))
ONE_WAY = (0.2, 0.2)  # 200-400 ms each way: 400-800 ms round trips
MEMBERS = 3


def _settled(fleet) -> bool:
    history = fleet.history()
    shards = history.live("work")
    leaders = [i for i in history.live("lead") if i.leader]
    return (len(shards) == MEMBERS and {i.count for i in shards} == {MEMBERS}
            and sorted(i.index for i in shards) == list(range(MEMBERS)) and len(leaders) == 1)


def test_fleet_survives_slow_round_trips_without_restarts(fleet):
    proxy = TcpProxy.to_url(fleet.etcd_url)
    proxy.set_delay(*ONE_WAY)
    try:
        config = fleet.write_config({"work": fleet.worker_role("sharded", settle="1s"),
                                     "lead": fleet.worker_role("singleton")}, ttl=TTL)
        for i in range(MEMBERS):
            fleet.start(f"m{i}", config, endpoints=proxy.url)
        wait_for(lambda: _settled(fleet), 90, "3 shards with COUNT=3 and one leader through the slow proxy")
        settled_at = time.time()
        before = {i.pid for i in fleet.history().intervals}
        deadline = time.monotonic() + SOAK
        while time.monotonic() < deadline:
            time.sleep(1.0)
            assert all(m.running() for m in fleet.members.values()), "a supervisor exited"
            history = fleet.history()
            restarted = [i for i in history.intervals if i.pid not in before]
            ended = [i for i in history.intervals if i.pid in before and i.end is not None
                     and i.end >= settled_at]
            assert not restarted and not ended, (
                f"spurious restart/stop under 400-800 ms round trips: started {restarted}, ended {ended}")
        assert _settled(fleet), "the fleet lost its shards or its leader"
        logs = fleet.logs()
        assert "deadline reached" not in logs, "a lease deadline fired during the soak"
        assert "lease timing: ttl 4s, stop_timeout 0.5s: tolerates round trips up to 1.2s" in logs
    finally:
        proxy.close()
