"""etcd restarts under a running fleet: a short outage (well under the TTL)
must not disturb the children, and the members keep working afterwards."""

from __future__ import annotations

import os
import time

import pytest

from .conftest import Fleet, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.etcd]


def test_short_etcd_restart_keeps_children_running(private_etcd, tmp_path):
    fleet = Fleet(tmp_path, private_etcd.url, "restart-" + os.urandom(4).hex())
    try:
        config = fleet.write_config({"lead": fleet.worker_role("singleton"),
                                     "shard": fleet.worker_role("sharded", settle="0.3s")}, ttl=10)
        fleet.start_many(2, config)
        wait_for(lambda: len(fleet.history().live("shard")) == 2 and fleet.history().live("lead"), 30,
                 "two shards and a leader")
        before = {i.pid for i in fleet.history().live()}
        private_etcd.restart()
        time.sleep(4.0)  # keepalives resume; nothing may have been stopped meanwhile
        after = {i.pid for i in fleet.history().live()}
        assert after == before, "a short etcd outage restarted children"
        # the cluster still works: a member leaving is resharded around
        leaving = next(m for m in fleet.members.values())
        leaving.term()
        assert leaving.wait(20) == 0
        wait_for(lambda: [(i.index, i.count) for i in fleet.history().live("shard")] == [(0, 1)], 20,
                 "the remaining member resharded to 0/1")
    finally:
        fleet.close()
