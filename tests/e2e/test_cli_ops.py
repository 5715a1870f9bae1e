"""Operator verbs (status, publish, waitgroup, rerun) against a real etcd.

The CLI runs in-process through ``etcdvisor.cli.main`` (output via capsys) and, for
the blocking ``waitgroup wait``, as a real subprocess. Each test works on its own
cluster name, derived from its unique ``etcd_prefix``.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time

import psutil
import pytest

from etcdvisor.cli import main
from etcdvisor.coord import open_backend
from etcdvisor.coord.keys import ClusterKeys
from etcdvisor.coord.session import Session
from etcdvisor.recipes.topic import QueueConsumer, Topic, message_id
from etcdvisor.testing import wait_for


@pytest.fixture
def cluster(etcd_prefix) -> str:
    return etcd_prefix.strip("/")  # "test-<12 hex>": a valid, unique cluster name


@pytest.fixture
def keys(cluster) -> ClusterKeys:
    return ClusterKeys(cluster)


@pytest.fixture
def env(monkeypatch, etcd_url, cluster):
    """The environment a supervisor's child has."""
    monkeypatch.setenv("ETCDVISOR_ENDPOINTS", etcd_url)
    monkeypatch.setenv("ETCDVISOR_CLUSTER", cluster)


@pytest.fixture
def no_env(monkeypatch):
    for name in ("ETCDVISOR_ENDPOINTS", "ETCDVISOR_CLUSTER", "ETCDVISOR_MEMBER_ID"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def store(etcd_url, keys):
    backend = open_backend(etcd_url, timeout=5)
    yield backend
    backend.delete(keys.base, keys.base[:-1] + "0")  # only this test's cluster
    backend.close()


@pytest.fixture
def config_file(tmp_path, etcd_url, cluster, no_env):
    path = tmp_path / "fleet.yaml"
    path.write_text(f"""
cluster: {cluster}
etcd: {{endpoints: ["{etcd_url}"]}}
member: {{id: m1}}
roles:
  worker: {{type: sharded, command: [sleep, "60"]}}
  migrate: {{type: job, command: ["true"], restart: never}}
  thumbs: {{type: topic, command: [cat], topic: images, max_payload: 10B}}
""")
    return str(path)


def run_cli(capsys, *argv, stdin: bytes | None = None, monkeypatch=None):
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error_line(err: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err


# --- connection ------------------------------------------------------------------------
@pytest.mark.parametrize("verb", [["status"], ["publish", "t", "x"], ["waitgroup", "get", "g"],
                                  ["rerun", "r"]])
def test_no_cluster_named_is_usage_error(capsys, no_env, verb):
    code, out, err = run_cli(capsys, *verb)
    assert code == 2 and out == ""
    assert_one_error_line(err)
    assert "ETCDVISOR_ENDPOINTS" in err and "-c CONFIG" in err


def test_unreachable_etcd_is_one_line_exit_1(capsys, monkeypatch):
    monkeypatch.setenv("ETCDVISOR_ENDPOINTS", "http://127.0.0.1:1")
    monkeypatch.setenv("ETCDVISOR_CLUSTER", "nowhere")
    code, out, err = run_cli(capsys, "status")
    assert code == 1 and out == ""
    assert_one_error_line(err)
    assert "127.0.0.1:1" in err


def test_bad_or_embedded_config_is_usage_error(capsys, tmp_path, no_env):
    bad = tmp_path / "bad.yaml"
    bad.write_text("cluster: x\nroles: {w: {type: sharded, comand: [a]}}\n")
    code, _, err = run_cli(capsys, "status", "-c", str(bad))
    assert code == 2
    assert_one_error_line(err)
    embedded = tmp_path / "embedded.yaml"
    embedded.write_text("cluster: x\netcd: {endpoints: embedded}\nroles: {}\n")
    code, _, err = run_cli(capsys, "waitgroup", "get", "g", "-c", str(embedded))
    assert code == 2
    assert_one_error_line(err)
    assert "embedded" in err


# --- status ----------------------------------------------------------------------------
def test_status_of_a_cluster_without_members_names_the_existing_clusters(capsys, env, cluster, store, keys):
    other = ClusterKeys(cluster + "-other")
    store.put(other.waitgroup("g"), "1")
    shared = f"/etcdvisor/_shared/config/global/audit-{cluster}"  # the global config scope
    store.put(shared, "1")
    try:
        for argv in (["status", "--json"], ["status"]):
            code, out, err = run_cli(capsys, *argv)
            assert code == 1 and out == ""
            assert_one_error_line(err)
            assert f"'{cluster}' has no members" in err and cluster + "-other" in err
            assert "_shared" not in err  # not a cluster
    finally:
        store.delete(other.base, other.base[:-1] + "0")
        store.delete(shared)


def test_status_of_a_cluster_with_one_member(capsys, env, cluster, store, keys):
    put_member(store, keys, "a", store.lease_grant(30).id, {})
    code, out, err = run_cli(capsys, "status", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert {"cluster", "revision", "members", "roles", "waitgroups", "topics", "control"} <= set(doc)
    assert doc["cluster"] == cluster and [m["member"] for m in doc["members"]] == ["a"]
    assert doc["roles"] == {} and doc["control"] == {}
    code, out, _ = run_cli(capsys, "status")
    assert code == 0 and f"cluster {cluster}" in out and "1 member" in out


def put_member(store, keys, member, lease, roles):
    record = {"member": member, "host": "host-" + member, "pid": 100, "started": time.time() - 90,
              "roles": roles}
    store.put(keys.member(member), json.dumps(record), lease=lease)


def populate_roles(store, keys) -> tuple[int, int]:
    """Two members running a sharded role, an election, cron ticks and a job record,
    written as the runtime writes them; returns (lease of member a, leader token)."""
    lease_a, lease_b = store.lease_grant(30).id, store.lease_grant(30).id
    child = {"worker": {"state": "running", "pid": 4242, "restarts": 1, "last_exit": 1}}
    put_member(store, keys, "a", lease_a, {
        "worker": {"type": "sharded", "failed": None, "state": "running", "index": 0, "count": 2,
                   "epoch": 77, "children": child},
        "boss": {"type": "singleton", "failed": None, "state": "leader", "leader": True,
                 "token": 0, "children": {}}})
    put_member(store, keys, "b", lease_b, {
        "worker": {"type": "sharded", "failed": None, "state": "running", "index": 1, "count": 2,
                   "epoch": 77, "children": {}}})
    store.put(keys.shard("worker") + "a", "a", lease=lease_a)
    store.put(keys.shard("worker") + "b", "b", lease=lease_b)
    leader_token = store.put(keys.election("boss") + f"{lease_a:x}", "a", lease=lease_a)
    store.put(keys.election("boss") + f"{lease_b:x}", "b", lease=lease_b)
    ticks = keys.ticks("nightly")
    store.put(ticks + "2024-05-01T03:00:00Z", json.dumps({"state": "succeeded", "member": "a",
              "token": 5, "scheduled": 1714532400, "started": 1714532401, "finished": 1714532460,
              "exit_code": 0}))
    store.put(ticks + "2024-05-02T03:00:00Z", json.dumps({"state": "missed", "member": None}))
    store.put(ticks + "2024-05-03T03:00:00Z", json.dumps({"state": "skipped", "member": "a"}))
    store.put(ticks + "2024-05-04T03:00:00Z", json.dumps({"state": "missed"}))
    store.put(keys.job("migrate"), json.dumps({"spec_hash": "ab12", "state": "failed", "member": "b",
                                               "token": 9, "exit_code": 3, "finished": 1714532460}))
    return lease_a, leader_token


def test_status_shows_members_roles_elections_ticks_jobs_groups_topics(
        capsys, env, store, keys, etcd_url):
    lease_a, leader_rev = populate_roles(store, keys)
    assert run_cli(capsys, "waitgroup", "add", "warmup", "3")[0] == 0
    assert run_cli(capsys, "publish", "--allow-unconsumed", "images", "one")[0] == 0
    ids = [int(run_cli(capsys, "publish", "--allow-unconsumed", "images", data)[1]) for data in ("two", "three")]
    session = Session(store, ttl=10, interval=0.5, name="consumer").start()
    try:
        consumer = QueueConsumer(Topic(store, keys.topic("images")), "thumbs", session)
        first = consumer.get(timeout=10)
        consumer.ack(first)
        assert consumer.get(timeout=10) is not None  # claimed, not acked
        code, out, err = run_cli(capsys, "status", "--json")
        code_text, text, _ = run_cli(capsys, "status")
        consumer.close()
    finally:
        session.close()
    assert code == 0, err
    doc = json.loads(out)
    assert [m["member"] for m in doc["members"]] == ["a", "b"]  # join order
    assert doc["members"][0]["host"] == "host-a" and doc["members"][0]["lease"] == lease_a
    worker = doc["roles"]["worker"]
    assert worker["type"] == "sharded" and worker["configured"] is False
    assert [(x["member"], x["index"], x["count"], x["epoch"]) for x in worker["assignments"]] == \
        [("a", 0, 2, 77), ("b", 1, 2, 77)]
    assert worker["assignments"][0]["children"]["worker"]["pid"] == 4242
    assert worker["shard"] == ["a", "b"]
    boss = doc["roles"]["boss"]
    assert boss["election"]["leader"] == "a" and boss["election"]["token"] == leader_rev
    assert [c["member"] for c in boss["election"]["candidates"]] == ["a", "b"]
    nightly = doc["roles"]["nightly"]
    assert nightly["type"] == "cron" and nightly["assignments"] == []
    assert nightly["ticks"]["retained"] == 4
    assert (nightly["ticks"]["missed"], nightly["ticks"]["skipped"]) == (2, 1)
    assert nightly["ticks"]["last"]["id"] == "2024-05-01T03:00:00Z"
    assert nightly["ticks"]["last"]["exit_code"] == 0
    assert doc["roles"]["migrate"]["type"] == "job"
    assert doc["roles"]["migrate"]["job"]["state"] == "failed"
    assert doc["waitgroups"] == {"warmup": 3}
    images = doc["topics"]["images"]
    assert images["messages"] == 3 and images["newest_id"] == ids[-1]
    assert images["groups"] == {"thumbs": {"unacked": 2, "claimed": 1}}
    assert code_text == 0
    for fragment in ("role worker (sharded)", "election: leader a", "shard members (join order): a, b",
                     "pid 4242", "last run: tick 2024-05-01T03:00:00Z succeeded on a",
                     "missed 2, skipped 1", "job: failed on b", "warmup", "thumbs"):
        assert fragment in text, (fragment, text)


def test_status_with_config_lists_configured_roles(capsys, config_file, store, keys):
    put_member(store, keys, "a", store.lease_grant(30).id, {})
    code, out, err = run_cli(capsys, "status", "--json", "-c", config_file)
    assert code == 0, err
    doc = json.loads(out)
    assert sorted(doc["roles"]) == ["migrate", "thumbs", "worker"]  # --json sorts keys
    assert doc["roles"]["migrate"] == {"type": "job", "configured": True, "assignments": [],
                                       "shard": None, "alive": None, "published": None, "election": None,
                                       "ticks": None, "job": None, "control": None, "rollout": None}
    assert doc["topics"]["images"] == {"messages": 0, "oldest_id": None, "newest_id": None, "groups": {}}


# --- publish ---------------------------------------------------------------------------
def test_publish_argument_and_stdin(capsys, env, store, keys, monkeypatch):
    code, out, err = run_cli(capsys, "publish", "--allow-unconsumed", "jobs", "hello")
    assert code == 0, err
    first_id = int(out)
    code, out, err = run_cli(capsys, "publish", "--allow-unconsumed", "jobs", "-", stdin=b"\x00\xffbinary",
                             monkeypatch=monkeypatch)
    assert code == 0, err
    second_id = int(out)
    code, out, _ = run_cli(capsys, "publish", "--allow-unconsumed", "jobs", stdin=b"third", monkeypatch=monkeypatch)
    assert code == 0
    stored = store.get_prefix(keys.topic("jobs") + "msg/").kvs
    assert [(kv.create_revision, kv.value) for kv in stored] == [
        (first_id, b"hello"), (second_id, b"\x00\xffbinary"), (int(out), b"third")]


def test_publish_follows_a_batched_topic_and_refuses_a_bad_format(capsys, env, store, keys):
    topic = Topic(store, keys.topic("fast"), batched=True)
    first = topic.publish_many([b"a", b"b"])
    code, out, err = run_cli(capsys, "publish", "--allow-unconsumed", "fast", "c")
    assert code == 0, err
    stored = store.get_prefix(keys.topic("fast") + "msg/").kvs
    assert [message_id(kv) for kv in stored] == first + [int(out)] and int(out) > first[-1]
    assert int(out) // 1000 == stored[-1].create_revision  # batched form: revision * 1000 + offset
    store.put(keys.topic("odd") + "format", b"fancy")
    code, out, err = run_cli(capsys, "publish", "--allow-unconsumed", "odd", "x")
    assert code != 0 and out == "" and "format" in err
    assert_one_error_line(err)


def test_publish_over_the_default_limit_fails_in_one_line(capsys, env, store, keys, monkeypatch):
    code, out, err = run_cli(capsys, "publish", "--allow-unconsumed", "big", "-", stdin=b"x" * (64 * 1024 + 1),
                             monkeypatch=monkeypatch)
    assert code == 1 and out == ""
    assert_one_error_line(err)
    assert "65536" in err
    code, _, err = run_cli(capsys, "publish", "--allow-unconsumed", "big", "-", stdin=b"x" * (64 * 1024),
                           monkeypatch=monkeypatch)
    assert code == 0, err
    assert len(store.get_prefix(keys.topic("big") + "msg/").kvs) == 1


def test_publish_uses_the_topic_roles_max_payload(capsys, config_file, store, keys):
    code, _, err = run_cli(capsys, "publish", "-c", config_file, "images", "x" * 11)
    assert code == 1
    assert_one_error_line(err)
    assert "10 bytes" in err
    assert run_cli(capsys, "publish", "-c", config_file, "images", "x" * 10)[0] == 0
    # another topic has no role in the config: the recipe's default applies
    assert run_cli(capsys, "publish", "--allow-unconsumed", "-c", config_file, "other", "x" * 11)[0] == 0


def test_publish_to_a_topic_nobody_consumes_is_refused_unless_allowed(capsys, env, store, keys):
    code, out, err = run_cli(capsys, "publish", "nobody", "x")
    assert code == 2 and out == ""
    assert_one_error_line(err)
    assert "'nobody'" in err and "--allow-unconsumed" in err
    assert not store.get_prefix(keys.topic("nobody")).kvs, "nothing was published"
    # a topic role reported by a live member is a consumer
    put_member(store, keys, "a", store.lease_grant(30).id, {"t": {"type": "topic", "topic": "live-topic"}})
    code, out, err = run_cli(capsys, "publish", "live-topic", "x")
    assert code == 0 and int(out) > 0, err
    assert run_cli(capsys, "publish", "--allow-unconsumed", "nobody", "x")[0] == 0


def test_publish_with_a_config_counts_its_topic_roles_as_consumers(capsys, config_file, store, keys):
    code, _, err = run_cli(capsys, "publish", "-c", config_file, "nobody", "x")
    assert code == 2 and config_file in err
    assert_one_error_line(err)
    assert run_cli(capsys, "publish", "-c", config_file, "images", "x")[0] == 0


def test_publish_rejects_bad_topic_name(capsys, env):
    code, _, err = run_cli(capsys, "publish", "a/b", "x")
    assert code == 2
    assert_one_error_line(err)


# --- waitgroup -------------------------------------------------------------------------
def test_waitgroup_add_done_get_and_below_zero(capsys, env, store, keys):
    assert run_cli(capsys, "waitgroup", "add", "g", "3")[:2] == (0, "3\n")
    assert run_cli(capsys, "waitgroup", "add", "g")[:2] == (0, "4\n")
    assert run_cli(capsys, "waitgroup", "done", "g")[:2] == (0, "3\n")
    assert run_cli(capsys, "waitgroup", "get", "g")[:2] == (0, "3\n")
    assert store.get(keys.waitgroup("g")).value == b"3"
    for expected in ("2\n", "1\n", "0\n"):
        assert run_cli(capsys, "waitgroup", "done", "g")[:2] == (0, expected)
    code, out, err = run_cli(capsys, "waitgroup", "done", "g")
    assert code == 1 and out == ""
    assert_one_error_line(err)
    assert store.get(keys.waitgroup("g")).value == b"0"  # nothing written
    assert run_cli(capsys, "waitgroup", "get", "never-used")[:2] == (0, "0\n")


def test_waitgroup_usage_errors(capsys, env):
    for argv in (["waitgroup", "add", "g", "zero"], ["waitgroup", "add", "g", "0"],
                 ["waitgroup", "done", "g", "2"], ["waitgroup", "get", "g", "--timeout", "1"],
                 ["waitgroup", "wait", "g", "--timeout", "1 s"], ["waitgroup", "wait", "g", "--timeout", "nan"],
                 ["waitgroup", "wait", "g", "--timeout", "-1"], ["waitgroup", "wait", "g", "--timeout", "9000h"]):
        code, _, err = run_cli(capsys, *argv)
        assert code == 2, argv
        assert_one_error_line(err)


def test_waitgroup_wait_times_out_then_returns_at_zero(capsys, env):
    assert run_cli(capsys, "waitgroup", "wait", "g")[0] == 0  # missing key counts as zero
    assert run_cli(capsys, "waitgroup", "add", "g", "1")[0] == 0
    started = time.monotonic()
    code, _, err = run_cli(capsys, "waitgroup", "wait", "g", "--timeout", "500ms")
    assert code == 1 and time.monotonic() - started >= 0.5
    assert_one_error_line(err)
    assert "still at 1" in err
    done = threading.Timer(0.5, lambda: main(["waitgroup", "done", "g"]))
    done.start()
    try:
        code, _, err = run_cli(capsys, "waitgroup", "wait", "g", "--timeout", "20")
    finally:
        done.join()
    assert code == 0, err


def test_waitgroup_wait_in_a_real_subprocess(capsys, env, etcd_url, cluster):
    assert run_cli(capsys, "waitgroup", "add", "barrier", "2")[0] == 0
    proc = subprocess.Popen(
        [sys.executable, "-m", "etcdvisor.cli", "waitgroup", "wait", "barrier", "--timeout", "60"],
        env={**os.environ, "ETCDVISOR_ENDPOINTS": etcd_url, "ETCDVISOR_CLUSTER": cluster},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        # it has started and talks to etcd; it must still be blocked at count 2
        port = int(etcd_url.rsplit(":", 1)[1])
        wait_for(lambda: proc.poll() is not None or any(
            c.raddr and c.raddr.port == port for c in psutil.Process(proc.pid).net_connections("tcp")),
            30, "the waiting process to connect to etcd")
        assert proc.poll() is None
        assert run_cli(capsys, "waitgroup", "done", "barrier")[0] == 0
        time.sleep(0.3)  # the contract is "not at 1": a short while in which it must not exit
        assert proc.poll() is None  # 1 left
        assert run_cli(capsys, "waitgroup", "done", "barrier")[0] == 0
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err


def test_subprocess_errors_are_one_line(no_env):
    result = subprocess.run([sys.executable, "-m", "etcdvisor.cli", "status"],
                            env={k: v for k, v in os.environ.items() if not k.startswith("ETCDVISOR_")},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stdout == ""
    assert_one_error_line(result.stderr)


# --- rerun -----------------------------------------------------------------------------
def test_rerun_without_config_deletes_the_record(capsys, env, store, keys):
    put_member(store, keys, "a", store.lease_grant(30).id, {"migrate": {"type": "job"}})
    store.put(keys.job("migrate"), '{"state": "succeeded", "spec_hash": "ab"}')
    code, out, err = run_cli(capsys, "rerun", "migrate")
    assert code == 0, err
    assert '"spec_hash": "ab"' in out and "deleted" in out
    assert store.get(keys.job("migrate")) is None
    code, out, _ = run_cli(capsys, "rerun", "migrate")
    assert code == 0 and "no job record" in out


def test_rerun_refuses_a_role_members_report_as_not_a_job(capsys, env, store, keys):
    lease = store.lease_grant(30).id
    put_member(store, keys, "a", lease, {"worker": {"type": "sharded", "state": "running"}})
    store.put(keys.job("worker"), "{}")
    code, _, err = run_cli(capsys, "rerun", "worker")
    assert code == 2
    assert_one_error_line(err)
    assert store.get(keys.job("worker")) is not None


def test_rerun_with_config(capsys, config_file, store, keys):
    store.put(keys.job("migrate"), '{"state": "failed"}')
    store.put(keys.job("worker"), "{}")
    for role in ("worker", "nope"):
        code, _, err = run_cli(capsys, "rerun", "-c", config_file, role)
        assert code == 2, role
        assert_one_error_line(err)
    assert store.get(keys.job("worker")) is not None
    code, out, err = run_cli(capsys, "rerun", "-c", config_file, "migrate")
    assert code == 0, err
    assert '"state": "failed"' in out
    assert store.get(keys.job("migrate")) is None


def test_rerun_of_an_unknown_role_is_one_line_non_zero(capsys, env, store, keys):
    put_member(store, keys, "a", store.lease_grant(30).id, {"migrate": {"type": "job"}})
    code, out, err = run_cli(capsys, "rerun", "migrat")
    assert code != 0 and out == ""
    assert_one_error_line(err)
    assert "'migrat'" in err and "migrate" in err


# --- control verbs (records only; members acting on them: tests/e2e/test_ops_control.py) ----
def test_control_records_show_in_status_text_and_json(capsys, env, store, keys):
    put_member(store, keys, "a", store.lease_grant(30).id,
               {"worker": {"type": "sharded"}, "tick": {"type": "cron"}})
    code, out, err = run_cli(capsys, "pause", "worker")
    assert code == 0 and "role worker: pause on every member" in out, err
    code, out, err = run_cli(capsys, "restart", "worker", "--index", "1", "--member", "a")
    assert code == 0 and "on member a, index 1" in out, err
    code, out, _ = run_cli(capsys, "status", "--json")
    doc = json.loads(out)
    control = doc["control"]["worker"]
    assert doc["roles"]["worker"]["control"] == control
    assert set(control) == {"pause", "restart"}
    assert control["restart"]["index"] == 1 and control["restart"]["member"] == "a"
    assert "@" in control["pause"]["who"] and control["pause"]["when"] > time.time() - 60
    code, out, _ = run_cli(capsys, "status")
    assert "pause (in effect)" in out and control["pause"]["who"] in out and "member a, index 1" in out
    code, out, err = run_cli(capsys, "resume", "worker")
    assert code == 0, err
    code, out, _ = run_cli(capsys, "status", "--json")
    assert set(json.loads(out)["control"]["worker"]) == {"restart", "resume"}
    code, _, err = run_cli(capsys, "trigger", "worker")
    assert code == 2 and "cron roles only" in err
    assert_one_error_line(err)


# --- config set mistakes (issue 19, 1.4) ----------------------------------------------------
def test_config_set_refuses_a_bad_item_name_and_an_unknown_member(capsys, env, store, keys):
    for bad in ("bad item!", "a\nb", ".hidden", "x" * 600):
        code, out, err = run_cli(capsys, "config", "set", bad, "1")
        assert code == 2 and out == "", (bad, err)
        assert_one_error_line(err)
        assert "config item name" in err
    code, out, err = run_cli(capsys, "config", "set", "db.port", "1", "--member", "nosuch")
    assert code == 2 and "'nosuch'" in err and "--allow-unknown-member" in err
    assert_one_error_line(err)
    put_member(store, keys, "a", store.lease_grant(30).id, {})
    assert run_cli(capsys, "config", "set", "db.port", "1", "--member", "a")[0] == 0
    code, _, err = run_cli(capsys, "config", "set", "db.port", "2", "--member", "later", "--allow-unknown-member")
    assert code == 0, err
    code, out, _ = run_cli(capsys, "config", "get", "db.port", "--member", "later")
    assert code == 0 and out.startswith("2")
