"""Health of children on real etcd with real ``supervisor run`` processes: a hung
child is replaced by its liveness probe in bounded time; an exec probe's daemon is
killed; a singleton leader whose child is not ready steps down to another member
(never two leader children at once); ``needs`` orders start and stop; ``on_failed:
exit`` ends the member with status 3 and no child left."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from .conftest import STOP_TIMEOUT, pid_alive, read_records, wait_for, wait_pids_gone
from .harness_ops import free_port
from .harness_roles import cli, poll_status
from .test_run_singleton import assert_one_leader_at_a_time, current_leader

pytestmark = [pytest.mark.slow, pytest.mark.etcd]

CHILD = Path(__file__).with_name("health_child.py")


def health_role(fleet, type_: str, **keys) -> dict:
    role = {"type": type_, "command": [sys.executable, str(CHILD)],
            "env": {"WORK_RECORD": str(fleet.record_path)}, "stop_timeout": STOP_TIMEOUT}
    env = keys.pop("env", {})
    role.update(keys)
    role["env"].update(env)
    return role


def children_of(status: dict | None, role: str) -> list[dict]:
    if status is None:
        return []
    return [c for m in status["members"] for c in (m["roles"].get(role) or {}).get("children", {}).values()]


@pytest.mark.parametrize("kind", ["http", "tcp", "exec"])
def test_a_child_that_hangs_is_restarted_by_its_liveness_probe(fleet, kind):
    port = free_port()
    check = ("import os, urllib.request as u; "
             f"u.urlopen('http://127.0.0.1:' + str({port} + int(os.environ['INDEX'])), timeout=0.3)")
    probe = {"http": {"http": f"http://127.0.0.1:{{{port} + index}}/healthz"},
             "tcp": {"tcp": f"127.0.0.1:{{{port} + index}}"},
             # the probe asks the child's own HTTP endpoint: a stopped child does not answer
             "exec": {"exec": [sys.executable, "-c", check]}}[kind]
    # exec: room for a python start on a loaded machine
    period, threshold, timeout = 0.5, 2, (2.0 if kind == "exec" else 0.5)
    probe.update(period=f"{period}s", failure_threshold=threshold, timeout=f"{timeout}s")
    hang_once = fleet.dir / "hung-once"
    role = health_role(fleet, "sharded", health={"liveness": probe}, stop_timeout="0.5s",
                       env={"HC_PORT": str(port), "HC_HANG_AFTER": "1.5", "HC_HANG_ONCE": str(hang_once),
                            "HC_BACKLOG": "1" if kind == "tcp" else ""})
    config = fleet.write_config({"api": role})
    fleet.start("m0", config)
    hang = wait_for(lambda: next((r for r in read_records(fleet.record_path) if r["event"] == "hang"), None),
                    30, "the child to hang itself")
    fillers = []
    if kind == "tcp":
        # the kernel completes handshakes for a stopped listener until its accept queue
        # is full (backlog 1 here): fill it, so that connects time out as for a dead host
        fillers = [_connect_nowait(port) for _ in range(8)]
    bound = period * threshold + timeout + 0.5 + 1.0  # stop_timeout 0.5s
    restarted = wait_for(lambda: next((r for r in read_records(fleet.record_path)
                                       if r["event"] == "start" and r["t"] > hang["t"]), None),
                         bound + 10, "a replacement child")
    took = restarted["t"] - hang["t"]
    assert took <= bound, f"replaced {took:.2f}s after it hung (bound {bound:.2f}s)"
    assert not pid_alive(hang["pid"]), "the hung child is still alive"
    for sock in fillers:
        sock.close()
    status = wait_for(lambda: (s := poll_status(config)) and any(
        c.get("ready") and (c.get("restarts_by_reason") or {}).get("liveness") for c in children_of(s, "api"))
        and s, 20, "status to show the replacement ready and a liveness restart")
    child = children_of(status, "api")[0]
    assert child["probe_failure"]["probe"] == "liveness" and child["probe_failure"]["message"]
    text = cli("status", "-c", str(config)).stdout.decode()
    assert "restarts (liveness 1)" in text and "last probe failure on m0" in text, text


def _connect_nowait(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setblocking(False)
    try:
        sock.connect(("127.0.0.1", port))
    except BlockingIOError:
        pass
    return sock


def test_an_exec_probe_that_spawns_a_daemon_leaves_nothing_behind(fleet):
    daemons = fleet.dir / "daemons.txt"
    probe = {"exec": ["sh", "-c", f"setsid sleep 300 </dev/null >/dev/null 2>&1 & echo $! >> {daemons}"],
             "period": "0.5s", "timeout": "2s"}
    config = fleet.write_config({"api": health_role(fleet, "sharded", health={"readiness": probe})})
    member = fleet.start("m0", config)
    wait_for(lambda: daemons.exists() and len(daemons.read_text().split()) >= 3, 30, "three probe runs")
    first = [int(p) for p in daemons.read_text().split()[:2]]
    assert not wait_pids_gone(first, 3.0), "a daemon spawned by an exec probe outlived the probe"
    member.term()
    assert member.wait(30) == 0
    every = [int(p) for p in daemons.read_text().split()]
    assert not wait_pids_gone(every, 3.0), "a probe's daemon outlived the supervisor"


def test_a_singleton_leader_whose_child_is_not_ready_steps_down(fleet):
    # readiness: a file per member says "unready" (the exec probe runs with the child's env)
    probe = {"exec": ["sh", "-c", f"test ! -e {fleet.dir}/unready-$MEMBER_ID"], "period": "0.3s",
             "failure_threshold": 1}
    role = health_role(fleet, "singleton", health={"readiness": probe}, step_down_after="1.5s",
                       backoff={"initial": "0.5s", "max": "20s"})
    config = fleet.write_config({"lead": role})
    fleet.start("m0", config)
    leader = current_leader(fleet, timeout=30)
    assert leader.member == "m0"
    wait_for(lambda: any(c.get("ready") for c in children_of(poll_status(config), "lead")), 20,
             "the leader's child to be ready")
    second = fleet.start("m1", config)
    second.wait_output("joined cluster", timeout=30)
    (fleet.dir / "unready-m0").touch()
    successor = current_leader(fleet, timeout=30, newer_than=leader.token)
    assert successor.member == "m1"
    assert "stepping down" in fleet.members["m0"].output()
    assert_one_leader_at_a_time(fleet)
    wait_for(lambda: any(c.get("ready") for c in children_of(poll_status(config), "lead")), 20,
             "the new leader's child to be ready")


def test_needs_starts_after_and_stops_before(fleet):
    db = health_role(fleet, "sharded", health={"notify": True}, env={"HC_NOTIFY_AFTER": "1.5"})
    api = health_role(fleet, "sharded", needs=["db"])
    config = fleet.write_config({"api": api, "db": db})
    member = fleet.start("m0", config)
    wait_for(lambda: {r["role"] for r in read_records(fleet.record_path) if r["event"] == "start"} == {"api", "db"},
             30, "both roles to start")
    status = wait_for(lambda: (s := poll_status(config)) and all(
        c.get("ready") for c in children_of(s, "db")) and children_of(s, "db") and s, 20, "db ready")
    assert children_of(status, "db")[0]["notify_status"] == "serving"
    text = cli("status", "-c", str(config)).stdout.decode()
    assert "STATUS= on m0 db[0]: serving" in text and "db[0]: running pid" in text and " ready" in text, text
    member.term()
    assert member.wait(30) == 0
    records = read_records(fleet.record_path)
    start = {r["role"]: r["t"] for r in records if r["event"] == "start"}
    stop = {r["role"]: r["t"] for r in records if r["event"] == "stop"}
    assert start["api"] - start["db"] >= 1.4, "api started before db was ready (READY=1 after 1.5s)"
    assert stop["api"] <= stop["db"], "db stopped before api, which needs it"


def test_on_failed_exit_stops_every_child_and_exits_3(fleet):
    steady = health_role(fleet, "sharded")
    broken = {"type": "sharded", "command": ["sh", "-c", "sleep 0.3; exit 1"], "on_failed": "exit",
              "start_retries": 1, "backoff": {"initial": "0.1s"}, "needs": ["steady"], "stop_timeout": "0.5s"}
    config = fleet.write_config({"steady": steady, "broken": broken})
    member = fleet.start("m0", config)
    assert member.wait(60) == 3, member.output()
    assert "on_failed: exit" in member.output()
    pids = [r["pid"] for r in read_records(fleet.record_path) if r["event"] == "start"]
    assert pids and not [p for p in pids if pid_alive(p)], "a child outlived the member"
    assert not member.descendants()
    assert fleet.backend().get(fleet.member_key("m0")) is None, "the member did not leave the cluster"


def test_a_child_over_its_memory_limit_is_restarted(fleet):
    role = health_role(fleet, "sharded", health={"memory": "40MiB"}, env={"HC_ALLOCATE_MB": "80"},
                       start_retries=2, backoff={"initial": "2s"})
    config = fleet.write_config({"api": role})
    fleet.start("m0", config)
    status = wait_for(lambda: (s := poll_status(config)) and any(
        (c.get("restarts_by_reason") or {}).get("memory") for c in children_of(s, "api")) and s, 30,
        "a restart for memory")
    child = children_of(status, "api")[0]
    assert child["probe_failure"]["probe"] == "memory" and "above the limit" in child["probe_failure"]["message"]
    # never healthy: counts toward start_retries like a crash loop
    wait_for(lambda: (s := poll_status(config)) and any(m["roles"]["api"].get("failed") for m in s["members"]),
             30, "the role to go FAILED")
