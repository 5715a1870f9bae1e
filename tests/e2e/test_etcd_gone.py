"""etcd goes away under a running member for longer than the lease (issue 19, 1.1): the
member says so once per backoff step, not once per attempt, stops its lease-bound children
at lease expiry, keeps retrying, and rejoins with a new lease when etcd is back."""

from __future__ import annotations

import os
import re

import pytest

from .conftest import Fleet, wait_for

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
