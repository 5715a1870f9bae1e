"""``supervisor status --json`` against a running 2-member cluster on real etcd
(sharded + singleton + cron + job), checked against what the children recorded
themselves: members and their pids, the shard assignments (INDEX 0..1), the
singleton's leader and fencing token, the job's record and the cron tick records."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from .conftest import wait_for
from .harness_roles import cli, recorder, status_json  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.etcd]


def tick_id(scheduled_time: str) -> str:
    """The store's tick id (UTC, second precision) of a child's SCHEDULED_TIME."""
    utc = datetime.fromisoformat(scheduled_time).astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_status_json_of_a_running_cluster(fleet, recorder):
    config = fleet.write_config({
        "shards": fleet.worker_role("sharded", settle="0.2s"),
        "lead": fleet.worker_role("singleton"),
        "tick": recorder.role("cron", schedule="@every 1s"),
        "migrate": recorder.role("job", sleep=0.3),
    })
    members = fleet.start_many(2, config)

    def settled():
        live = fleet.history().live()
        shards = sorted((i.index, i.count) for i in live if i.role == "shards")
        leaders = [i for i in live if i.role == "lead" and i.leader]
        return shards == [(0, 2), (1, 2)] and len(leaders) == 1 and \
            recorder.ends("migrate") and len(recorder.ends("tick")) >= 3

    wait_for(settled, 60, "shards 0..1, a leader, the job done and 3 cron runs")
    doc = status_json(config)
    time.sleep(0.5)  # children of ticks claimed at the snapshot have recorded their start
    live = fleet.history().live()

    assert doc["cluster"] == fleet.cluster
    assert sorted((m["member"], m["pid"]) for m in doc["members"]) == sorted((m.id, m.pid) for m in members)
    assert all(m["lease"] for m in doc["members"])

    shards = doc["roles"]["shards"]
    assert shards["type"] == "sharded" and shards["configured"] is True
    assert sorted(shards["shard"]) == ["m0", "m1"]
    by_member = {a["member"]: a for a in shards["assignments"]}
    assert sorted(a["index"] for a in by_member.values()) == [0, 1]
    assert {a["count"] for a in by_member.values()} == {2}
    for child in (i for i in live if i.role == "shards"):
        assignment = by_member[child.member]
        assert (assignment["index"], assignment["epoch"]) == (child.index, child.epoch)
        assert [c["pid"] for c in assignment["children"].values()] == [child.pid]

    lead = doc["roles"]["lead"]
    [leader_child] = [i for i in live if i.role == "lead" and i.leader]
    assert lead["election"]["leader"] == leader_child.member
    assert lead["election"]["token"] == leader_child.token
    assert len(lead["election"]["candidates"]) == 2
    leading = [a for a in lead["assignments"] if a["leader"]]
    assert [(a["member"], a["token"]) for a in leading] == [(leader_child.member, leader_child.token)]

    job = doc["roles"]["migrate"]["job"]
    [job_start] = recorder.starts("migrate")
    assert job["state"] == "succeeded" and job["exit_code"] == 0
    assert (job["member"], job["token"]) == (job_start["member_id"], int(job_start["leader_token"]))
    assert job["spec_hash"]

    ticks = doc["roles"]["tick"]["ticks"]
    cron_starts = recorder.starts("tick")
    ran = {tick_id(r["scheduled_time"]): r for r in cron_starts}
    assert ticks["retained"] >= 3 and ticks["missed"] == 0
    last = ticks["last"]
    assert last["state"] in ("running", "succeeded")
    assert last["id"] in ran, f"last tick {last['id']} has no child record ({sorted(ran)})"
    assert (last["member"], last["token"]) == (ran[last["id"]]["member_id"], int(ran[last["id"]]["leader_token"]))
    assert doc["roles"]["tick"]["election"]["leader"] == last["member"]

    text = cli("status", "-c", str(config))
    assert text.returncode == 0, text.stderr
    assert b"role shards (sharded)" in text.stdout and b"role migrate (job)" in text.stdout
