"""Control verbs across 3 real ``supervisor run`` members on real etcd.

Each verb is issued once from the CLI (a separate process, as an operator would);
its effect is read from the children's own records (and the tick records in
etcd), and ``status --json`` must show who issued it and when.
"""

from __future__ import annotations

import json
import socket
import sys
import time

import pytest

from .conftest import pid_alive, wait_for, wait_pids_gone
from .harness_ops import free_port, metric
from .harness_roles import cli, poll_status, recorder, status_json  # noqa: F401

pytestmark = [pytest.mark.etcd]

MEMBERS = ("m0", "m1", "m2")


def issue(config, *argv) -> float:
    """Run a control verb; returns the wall time just before it was issued."""
    before = time.time()
    result = cli(*argv, "-c", str(config))
    assert result.returncode == 0, result.stderr.decode()
    return before


def assert_recorded(config, role: str, verb: str, after: float) -> dict:
    record = status_json(config)["control"][role][verb]
    assert record["who"].endswith("@" + socket.gethostname()) and record["host"] == socket.gethostname()
    assert after - 1 <= record["when"] <= time.time() + 1 and record["at"].startswith("20")
    return record


def live(recorder, role: str, member: str | None = None) -> list[dict]:
    return [r for r in recorder.starts(role) if pid_alive(r["pid"], r["t"])
            and (member is None or r["member_id"] == member)]


def start_three(fleet, config):
    members = [fleet.start(m, config) for m in MEMBERS]
    return members


def wait_sharded(recorder, role: str, timeout: float = 45) -> list[dict]:
    return wait_for(lambda: (lambda now: now if len(now) == 3 and {r["count"] for r in now} == {"3"}
                             else None)(live(recorder, role)), timeout, f"3 live {role} children with COUNT=3")


def test_restart_all_then_one_member_then_one_index(fleet, recorder):
    # max_unavailable 100%: the whole-role restart is a rollout that takes every child at once
    config = fleet.write_config({"worker": recorder.role("sharded", sleep=600, settle=0,
                                                         rollout={"max_unavailable": "100%"})})
    start_three(fleet, config)
    first = wait_sharded(recorder, "worker")
    issued = issue(config, "restart", "worker")
    assert not wait_pids_gone([r["pid"] for r in first], 10), "old children still alive"
    second = wait_sharded(recorder, "worker", 20)
    assert {r["pid"] for r in second}.isdisjoint(r["pid"] for r in first)
    assert all(r["t"] - issued < 8 for r in second), "restart took effect late"
    assert_recorded(config, "worker", "restart", issued)

    issued = issue(config, "restart", "worker", "--member", "m1")
    wait_for(lambda: len(live(recorder, "worker", "m1")) == 1 and
             live(recorder, "worker", "m1")[0]["t"] > issued, 20, "m1's child to restart")
    time.sleep(0.5)  # the contract: nothing else restarts (a short while to show it)
    untouched = {r["pid"] for r in second if r["member_id"] != "m1"}
    assert untouched <= {r["pid"] for r in live(recorder, "worker")}, "other members restarted"
    record = assert_recorded(config, "worker", "restart", issued)
    assert record["member"] == "m1"

    third = live(recorder, "worker")
    target = next(r for r in third if r["index"] == "2")
    issued = issue(config, "restart", "worker", "--index", "2")
    wait_for(lambda: not pid_alive(target["pid"]) and
             any(r["index"] == "2" and r["t"] > issued for r in live(recorder, "worker")), 20,
             "INDEX 2 to restart")
    time.sleep(0.5)  # the contract: no other index restarts (a short while to show it)
    assert {r["pid"] for r in third if r["index"] != "2"} <= {r["pid"] for r in live(recorder, "worker")}
    assert assert_recorded(config, "worker", "restart", issued)["index"] == 2


def test_pause_stops_everywhere_records_paused_ticks_and_resume_runs_again(fleet, recorder):
    config = fleet.write_config({
        "worker": recorder.role("sharded", sleep=600, settle=0),
        "tick": recorder.role("cron", schedule="@every 1s", sleep=0.1),
    })
    start_three(fleet, config)
    running = wait_sharded(recorder, "worker")
    wait_for(lambda: len(recorder.starts("tick")) >= 2, 30, "cron runs")
    paused_at = issue(config, "pause", "worker")
    issue(config, "pause", "tick")
    tick_paused = time.time()  # the CLI returned: the record is in etcd
    assert not wait_pids_gone([r["pid"] for r in running], 10), "children still alive after pause"
    ticks_prefix = f"/etcdvisor/{fleet.cluster}/roles/tick/ticks/"

    def paused_ticks():
        records = [json.loads(kv.value) for kv in fleet.backend().get_prefix(ticks_prefix).kvs]
        return [r for r in records if r["state"] == "paused"]
    # two ticks came due and were recorded as paused: the cron leader has acted on the pause
    wait_for(lambda: len(paused_ticks()) >= 2, 15, "2 ticks recorded as paused")
    assert not [r for r in recorder.starts("worker") if r["t"] > paused_at], "a paused role started"
    late = [r for r in recorder.starts("tick") if r["t"] > tick_paused + 1.5]
    assert not late, f"cron ran while paused: {late}"
    doc = status_json(config)
    assert assert_recorded(config, "worker", "pause", paused_at)["verb"] == "pause"
    reported = [m["roles"]["worker"].get("paused") for m in doc["members"]]
    assert reported == [True, True, True], reported
    paused = paused_ticks()
    assert len(paused) >= 2, paused

    resumed_at = issue(config, "resume", "worker")
    issue(config, "resume", "tick")
    wait_for(lambda: len([r for r in live(recorder, "worker") if r["t"] > resumed_at]) == 3, 30,
             "3 children after resume")
    wait_for(lambda: [r for r in recorder.starts("tick") if r["t"] > resumed_at], 30, "cron after resume")
    paused_times = {t["scheduled"] for t in paused}
    from datetime import datetime

    rerun = [r for r in recorder.starts("tick")
             if datetime.fromisoformat(r["scheduled_time"]).isoformat() in paused_times]
    assert not rerun, f"paused ticks ran late: {rerun}"
    doc = status_json(config)
    assert "pause" not in doc["control"].get("worker", {})
    assert doc["control"]["worker"]["resume"]["when"] >= resumed_at - 1


FLAKY = r'''
import os, sys
if os.path.exists(os.environ["FAIL_FLAG"]):
    sys.exit(1)
os.execv(sys.executable, [sys.executable, "-S", os.environ["CHILD_SCRIPT"]])
'''


def test_reset_clears_a_failed_role_on_every_member(fleet, recorder):
    flag = fleet.dir / "fail.flag"
    flag.write_text("x")
    flaky = fleet.dir / "flaky.py"
    flaky.write_text(FLAKY)
    role = recorder.role("sharded", sleep=600, settle=0, start_retries=1,
                         backoff={"initial": "0.1s", "max": "0.2s"},
                         env={"FAIL_FLAG": str(flag), "CHILD_SCRIPT": str(recorder.script)})
    role["command"] = [sys.executable, "-S", str(flaky)]
    config = fleet.write_config({"flaky": role})
    start_three(fleet, config)

    def failed_everywhere():
        doc = poll_status(config)
        if doc is None:
            return False
        states = [m["roles"].get("flaky", {}).get("failed") for m in doc["members"]]
        return len(states) == 3 and all(states)
    wait_for(failed_everywhere, 60, "the role to be FAILED on all 3 members")
    assert not recorder.starts("flaky")
    flag.unlink()
    issued = issue(config, "reset", "flaky")
    wait_sharded(recorder, "flaky", 30)
    assert all(r["t"] > issued for r in recorder.starts("flaky"))
    assert_recorded(config, "flaky", "reset", issued)
    # member records wait out a transition (runtime/member.py TRANSITION_HOLD, 2 s): the
    # restarted role shows as not failed once its member's record is rewritten, not at once
    wait_for(lambda: [m["roles"]["flaky"]["failed"] for m in status_json(config)["members"]]
             == [None, None, None], 30, "status to show the role not failed on all 3 members")


def test_trigger_runs_a_cron_role_once_now_on_the_leader(fleet, recorder):
    config = fleet.write_config({"report": recorder.role("cron", schedule="0 0 1 1 *", sleep=0.2)})
    start_three(fleet, config)

    def leader():
        doc = poll_status(config)
        election = doc and doc["roles"]["report"]["election"]
        return election and election["leader"]
    leader_id = wait_for(leader, 30, "a cron leader")
    issued = issue(config, "trigger", "report")
    runs = wait_for(lambda: recorder.starts("report"), 10, "the manual run")
    assert runs[0]["t"] - issued < 5 and runs[0]["member_id"] == leader_id
    assert runs[0]["leader_token"]
    wait_for(lambda: recorder.ends("report"), 10, "the manual run to end")
    issue(config, "trigger", "report")
    wait_for(lambda: len(recorder.ends("report")) == 2, 10, "the second manual run")
    ticks_prefix = f"/etcdvisor/{fleet.cluster}/roles/report/ticks/"
    wait_for(lambda: [json.loads(kv.value)["state"] for kv in fleet.backend().get_prefix(ticks_prefix).kvs]
             == ["succeeded", "succeeded"], 10, "both manual runs recorded as succeeded")
    time.sleep(0.5)  # the contract: a trigger runs once (a short while to show no second run)
    assert len(recorder.starts("report")) == 2, "a trigger ran more than once"
    ticks = fleet.backend().get_prefix(ticks_prefix).kvs
    records = [json.loads(kv.value) for kv in ticks]
    assert len(records) == 2 and all(r["manual"] and r["state"] == "succeeded" for r in records), records
    assert all(kv.key.endswith("-manual") for kv in ticks)
    record = assert_recorded(config, "report", "trigger", issued)
    assert {r["trigger"] for r in records} >= {record["id"]}


def test_control_verb_errors_are_one_line_non_zero(fleet, recorder):
    config = fleet.write_config({"worker": recorder.role("sharded", sleep=600, settle=0),
                                 "tick": recorder.role("cron", schedule="0 0 1 1 *")})
    fleet.start("m0", config)
    wait_for(lambda: live(recorder, "worker"), 30, "the worker")
    # `--index` is checked against the COUNT in the member records, which wait out a
    # transition (runtime/member.py TRANSITION_HOLD, 2 s): wait until m0's record shows it
    wait_for(lambda: [m["roles"].get("worker", {}).get("count") for m in status_json(config)["members"]] == [1],
             30, "m0's record to show the worker's COUNT=1")
    env = {"ETCDVISOR_ENDPOINTS": fleet.etcd_url}
    cases = [
        (["pause", "nope", "-c", str(config)], "'nope'"),
        (["trigger", "worker", "-c", str(config)], "cron roles only"),
        (["restart", "tick", "--index", "1", "-c", str(config)], "sharded roles only"),
        (["restart", "worker", "--member", "ghost", "-c", str(config)], "'ghost'"),
        (["restart", "worker", "--index", "7", "-c", str(config)], "COUNT=1"),  # one member: only index 0
        (["pause", "worker"], "no cluster 'no-such-cluster'"),
        (["status"], "'no-such-cluster' has no members"),
        (["rerun", "nope", "-c", str(config)], "'nope'"),
    ]
    for argv, fragment in cases:
        extra = {**env, "ETCDVISOR_CLUSTER": "no-such-cluster"} if "-c" not in argv else env
        result = cli(*argv, env=extra)
        err = result.stderr.decode()
        assert result.returncode != 0, (argv, err)
        assert len(err.strip().splitlines()) == 1 and fragment in err and "Traceback" not in err, (argv, err)
        if "no-such-cluster" in fragment:
            assert fleet.cluster in err, err  # names the clusters that exist


def test_pause_keeps_topic_messages_queued_until_resume(fleet, recorder):
    config = fleet.write_config({"thumbs": recorder.role("topic", topic="images", concurrency=1)})
    ports = [free_port() for _ in MEMBERS]
    for member, port in zip(MEMBERS, ports):
        fleet.start(member, config, env={"ETCDVISOR_HTTP": f"127.0.0.1:{port}"})
    wait_for(lambda: poll_status(config) and len(poll_status(config)["members"]) == 3, 30, "3 members")
    issue(config, "pause", "thumbs")
    wait_for(lambda: all(fleet.role_status(m, "thumbs").get("paused") for m in MEMBERS), 15,
             "every member to report the pause")
    ids = [int(cli("publish", "-c", str(config), "images", f"m{n}").stdout) for n in range(4)]
    # every member sees the 4 messages waiting and runs none
    for port in ports:
        wait_for(lambda: metric(port, "etcdvisor_topic_backlog", role="thumbs") == 4, 15, "backlog 4")
    time.sleep(0.5)  # the contract: nothing runs while paused (a short while to show it)
    assert not recorder.starts("thumbs"), "a paused topic role ran a message"
    topic = status_json(config)["topics"]["images"]
    assert topic["messages"] == 4 and topic["groups"].get("thumbs", {"unacked": 4})["unacked"] == 4
    issue(config, "resume", "thumbs")
    wait_for(lambda: len(recorder.ends("thumbs")) == 4, 30, "the queued messages to run after resume")
    assert sorted(int(r["message_id"]) for r in recorder.starts("thumbs")) == ids, "each message once"
    wait_for(lambda: sum(metric(p, "etcdvisor_topic_messages_total", role="thumbs", outcome="done") or 0
                         for p in ports) == 4, 15, "topic_messages_total{outcome=done} == 4")
    wait_for(lambda: metric(ports[1], "etcdvisor_topic_backlog", role="thumbs") == 0, 15, "backlog 0")
