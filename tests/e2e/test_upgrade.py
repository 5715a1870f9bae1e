"""In-place upgrade of running members (issue 20): real ``supervisor run`` processes, real etcd.

* three members run sharded, singleton, cron (every second) and topic roles; every member
  is upgraded in turn, twice (SIGUSR2 and ``supervisor upgrade --member M``): no child is
  restarted (same pids), EPOCH and LEADER_TOKEN stay, no cron tick is missed or run twice,
  no topic message is lost or run twice; ``status`` shows version and upgrade time;
* a failed check (the config on disk made invalid; the package made unimportable in a
  copy of it on PYTHONPATH) leaves the old code running, with one line;
* SIGKILL of a member during the hand-over leaves no child behind (the watchdog);
* a new build that cannot read the hand-over state stops the children cleanly and exits 1.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import threading
from pathlib import Path

import pytest

from etcdvisor.coord.keys import ClusterKeys
from etcdvisor.recipes.topic import Topic

from .conftest import REPO, pid_alive, wait_for, wait_pids_gone
from .harness_roles import cli

pytestmark = [pytest.mark.timeout(300)]  # each upgrade starts a new interpreter: slow on a loaded machine
TTL = 30  # the hand-over gap (a fresh interpreter: seconds, on a loaded machine) stays well inside it


def roles(fleet, out: Path) -> dict:
    ticks, runs = out / "ticks.txt", out / "messages.txt"
    return {
        "shard": fleet.worker_role("sharded"),
        "single": fleet.worker_role("singleton"),
        "tick": {"type": "cron", "schedule": "@every 1s", "concurrency": "allow", "stop_timeout": "1s",
                 "command": ["sh", "-c", f'echo "$SCHEDULED_TIME" >> {ticks}; sleep 0.3']},
        "jobs": {"type": "topic", "stop_timeout": "1s", "concurrency": 2,
                 "command": ["sh", "-c", f'echo "$MESSAGE_ID" >> {runs}; sleep 0.4']},
    }


def member_record(fleet, member_id: str) -> dict:
    kv = fleet.backend().get(fleet.member_key(member_id))
    return json.loads(kv.value) if kv is not None else {}


def upgrades_done(member) -> int:
    return member.output().count("upgrade done:")


def long_running(fleet) -> dict[int, dict]:
    """pid -> start record of the sharded and singleton workers."""
    return {r["pid"]: r for r in fleet.records() if r["event"] == "start" and r["role"] in ("shard", "single")}


def live_workers(fleet) -> dict[int, dict]:
    """pid -> start record of the sharded and singleton workers alive now."""
    stopped = {r["pid"] for r in fleet.records() if r["event"] == "stop"}
    return {pid: r for pid, r in long_running(fleet).items() if pid not in stopped and pid_alive(pid, r["t"])}


def settled(fleet, ids) -> bool:
    records = {m: member_record(fleet, m) for m in ids}
    leaders = [m for m, r in records.items() if r.get("roles", {}).get("single", {}).get("leader")]
    shards = [r.get("roles", {}).get("shard", {}) for r in records.values()]
    running = [s.get("state") == "running" and s.get("count") == len(ids) for s in shards]
    return len(leaders) == 1 and all(running) and len(live_workers(fleet)) == len(ids) + 1


@pytest.mark.slow  # six upgrades in turn: ~40 s on an idle machine
@pytest.mark.timeout(400)
def test_upgrade_every_member_twice_keeps_children_epoch_tokens_ticks_and_messages(fleet, tmp_path):
    config = fleet.write_config(roles(fleet, tmp_path), ttl=TTL)
    members = fleet.start_many(3, config)
    ids = [m.id for m in members]
    wait_for(lambda: settled(fleet, ids), 120, "three members with the roles running")
    before = {m: member_record(fleet, m) for m in ids}
    children, started = live_workers(fleet), long_running(fleet)
    epochs = {m: before[m]["roles"]["shard"]["epoch"] for m in ids}
    token = next(r["roles"]["single"]["token"] for r in before.values() if r["roles"]["single"]["leader"])

    topic = Topic(fleet.backend(), ClusterKeys(fleet.cluster).topic("jobs"))
    published: list[int] = []
    publishing = threading.Event()

    def publish() -> None:  # a steady trickle while the members upgrade
        n = 0
        while not publishing.wait(0.15):
            published.append(topic.publish(b"%d" % n))
            n += 1

    publisher = threading.Thread(target=publish, daemon=True)
    publisher.start()
    env = {"ETCDVISOR_ENDPOINTS": fleet.etcd_url, "ETCDVISOR_CLUSTER": fleet.cluster}
    for round_ in range(2):
        for position, member in enumerate(members):
            done = upgrades_done(member)
            if (position + round_) % 2 == 0:
                member.signal(signal.SIGUSR2)
            else:
                result = cli("upgrade", "--member", member.id, env=env)
                assert result.returncode == 0, result.stderr
                assert b"upgrade of member" in result.stdout
            wait_for(lambda m=member, d=done: upgrades_done(m) > d, 120, f"{member.id} to upgrade")
            assert member.running()
    publishing.set()
    publisher.join(5)

    runs_file = tmp_path / "messages.txt"
    wait_for(lambda: runs_file.exists() and set(map(int, runs_file.read_text().split())) >= set(published),
             30, "every message to run")
    wait_for(lambda: all(member_record(fleet, m).get("upgrades") == 2 for m in ids), 10, "the member records")
    after = {m: member_record(fleet, m) for m in ids}
    # no child restarted: the same workers, alive, and no new ones
    assert long_running(fleet) == started
    assert live_workers(fleet) == children
    assert {m: after[m].get("roles", {}).get("shard", {}).get("epoch") for m in ids} == epochs, after
    assert [r["roles"]["single"]["token"] for r in after.values() if r["roles"]["single"]["leader"]] == [token]
    # status: version and when each member last upgraded (twice each)
    for m in ids:
        assert after[m]["version"] and after[m]["upgrades"] == 2
        assert after[m]["upgraded"] > before[m]["started"]
        assert after[m]["started"] == before[m]["started"]
    # topic: every message exactly once
    runs = [int(x) for x in runs_file.read_text().split()]
    assert sorted(runs) == sorted(set(runs)), "a message ran twice"
    assert set(runs) == set(published)
    # cron: one run per second, none missed, none twice
    ticks = (tmp_path / "ticks.txt").read_text().split()
    assert len(ticks) == len(set(ticks)), "a tick ran twice"
    from datetime import datetime

    seconds = sorted(int(datetime.fromisoformat(t).timestamp()) for t in ticks)
    assert seconds == list(range(seconds[0], seconds[-1] + 1)), "a tick was missed"
    text = "\n".join(m.output() for m in members)
    assert "differs from what the new code wants" not in text
    assert "Traceback" not in text


def test_failed_check_keeps_the_old_code_running(fleet, tmp_path):
    shim = tmp_path / "shim"
    shutil.copytree(REPO / "src" / "etcdvisor", shim / "etcdvisor",
                    ignore=shutil.ignore_patterns("__pycache__"))
    config = fleet.write_config({"shard": fleet.worker_role("sharded")}, ttl=TTL)
    member = fleet.start("m0", config, env={"PYTHONPATH": str(shim)})
    wait_for(lambda: len(long_running(fleet)) == 1, 30, "the worker to start")
    pid = member.pid
    # 1. the config on disk made invalid
    good = config.read_text()
    config.write_text(good.replace("type: sharded", "type: shardedd"))
    member.signal(signal.SIGUSR2)
    line = wait_for(lambda: [x for x in member.output().splitlines() if "upgrade refused" in x], 30,
                    "the refusal")
    assert len(line) == 1 and "keeping the running code" in line[0] and "shardedd" in line[0], line
    config.write_text(good)
    # 2. the package made unimportable (the copy the member runs from)
    init = shim / "etcdvisor" / "__init__.py"
    init.write_text(init.read_text() + "\nraise ImportError('broken build')\n")
    member.signal(signal.SIGUSR2)
    lines = wait_for(lambda: [x for x in member.output().splitlines() if "upgrade refused" in x][1:], 30,
                     "the second refusal")
    assert len(lines) == 1 and "cannot import the new code" in lines[0] and "broken build" in lines[0], lines
    assert "upgrading to" not in member.output()
    assert member.running() and member.pid == pid
    assert len(long_running(fleet)) == 1 and all(pid_alive(p) for p in long_running(fleet))
    # still supervising: a killed worker is restarted by the old code
    victim = next(iter(long_running(fleet)))
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: len(long_running(fleet)) == 2, 30, "the old code to restart the worker")


def test_sigkill_during_the_hand_over_leaves_no_child(fleet, tmp_path):
    config = fleet.write_config(roles(fleet, tmp_path), ttl=TTL)
    member = fleet.start("m0", config)
    wait_for(lambda: settled(fleet, ["m0"]), 30, "the roles to run")
    watchdog = member.watchdog_pid()
    member.signal(signal.SIGUSR2)
    wait_for(lambda: "upgrading to" in member.output(), 120, "the exec")
    member.kill()  # the new image is still starting (a fresh interpreter takes a while)
    assert "upgrade done" not in member.output()
    pids = [r["pid"] for r in fleet.records() if r["event"] == "start"]
    assert wait_pids_gone(pids + [watchdog], 10) == []


def test_a_build_that_cannot_read_the_state_stops_children_and_exits_1(fleet, tmp_path):
    shim = tmp_path / "shim"
    shutil.copytree(REPO / "src" / "etcdvisor", shim / "etcdvisor",
                    ignore=shutil.ignore_patterns("__pycache__"))
    config = fleet.write_config({"shard": fleet.worker_role("sharded"), "single": fleet.worker_role("singleton")},
                                ttl=TTL)
    member = fleet.start("m0", config, env={"PYTHONPATH": str(shim)})
    wait_for(lambda: len(long_running(fleet)) == 2, 30, "the workers to start")
    handover = shim / "etcdvisor" / "runtime" / "handover.py"
    handover.write_text(handover.read_text().replace("READABLE = (1,)", "READABLE = (99,)"))
    member.signal(signal.SIGUSR2)
    assert member.wait(30) == 1
    assert "this build reads version 99" in member.output()
    stops = {r["pid"] for r in fleet.records() if r["event"] == "stop"}
    assert stops == set(long_running(fleet)), "every worker stopped cleanly (SIGTERM)"
    assert wait_pids_gone(list(long_running(fleet)), 10) == []
    assert sys.executable  # the member ran this interpreter: nothing else is involved


def test_upgrade_keeps_children_with_notify_config_items_registrations_and_peers(fleet, tmp_path):
    """The paths a child got (NOTIFY_SOCKET, its config files) and its registration stay
    valid across the upgrade: the children are adopted, not replaced; the wiring still
    acts afterwards (a config item with on_change: restart restarts the child)."""
    api = fleet.worker_role("sharded", health={"notify": True},
                            config={"DB_PORT": {"item": "database.port", "default": 5432, "on_change": "restart"}},
                            register={"service": "api", "address": "127.0.0.1", "port": "8000 + {index}"})
    gateway = fleet.worker_role("singleton", peers={"api": {"file": "peers/api.json", "on_change": "none"}},
                                cwd=str(tmp_path))
    config = fleet.write_config({"api": api, "gw": gateway}, ttl=TTL)
    member = fleet.start("m0", config)
    wait_for(lambda: len(long_running_of(fleet, ("api", "gw"))) == 2, 60, "the workers to start")
    wait_for(lambda: fleet.backend().get_prefix(f"/etcdvisor/{fleet.cluster}/services/api/").kvs, 30,
             "the registration")
    children = long_running_of(fleet, ("api", "gw"))
    for n in range(2):
        member.signal(signal.SIGUSR2)
        wait_for(lambda n=n: upgrades_done(member) > n, 120, "the upgrade")
    assert "differs from what the new code wants" not in member.output()
    assert long_running_of(fleet, ("api", "gw")) == children
    status = cli("status", "-c", str(config))
    assert status.returncode == 0, status.stderr
    header, row = [line for line in status.stdout.decode().splitlines() if line.startswith(("MEMBER", "m0"))][:2]
    assert header.split()[4:6] == ["VERSION", "UPGRADED"] and "ago" in row, status.stdout
    wrong = cli("upgrade", "--member", "nosuch", "-c", str(config))
    assert wrong.returncode == 2 and wrong.stderr.decode().count("\n") == 1, wrong.stderr
    assert b"no live member 'nosuch'" in wrong.stderr
    assert fleet.backend().get_prefix(f"/etcdvisor/{fleet.cluster}/services/api/").kvs
    result = cli("config", "set", "database.port", "5433", "--type", "int", "-c", str(config))
    assert result.returncode == 0, result.stderr
    wait_for(lambda: len(long_running_of(fleet, ("api",))) == 2, 30, "the config item to restart the api child")


def long_running_of(fleet, roles) -> dict[int, dict]:
    return {r["pid"]: r for r in fleet.records() if r["event"] == "start" and r["role"] in roles}


def test_upgrade_keeps_broadcast_topic_runs_exactly_once(fleet, tmp_path):
    runs_file = tmp_path / "broadcast.txt"
    role = {"type": "topic", "delivery": "broadcast", "concurrency": 2, "stop_timeout": "1s",
            "command": ["sh", "-c", f'echo "$MESSAGE_ID" >> {runs_file}; sleep 0.4']}
    config = fleet.write_config({"news": role}, ttl=TTL)
    member = fleet.start("m0", config)
    wait_for(lambda: "news" in member_record(fleet, "m0").get("roles", {}), 30, "the role to start")
    topic = Topic(fleet.backend(), ClusterKeys(fleet.cluster).topic("news"))
    published: list[int] = []
    stop = threading.Event()

    def publish() -> None:
        n = 0
        while not stop.wait(0.1):
            published.append(topic.publish(b"%d" % n))
            n += 1

    publisher = threading.Thread(target=publish, daemon=True)
    publisher.start()
    for n in range(2):
        member.signal(signal.SIGUSR2)
        wait_for(lambda n=n: upgrades_done(member) > n, 120, "the upgrade")
    stop.set()
    publisher.join(5)
    wait_for(lambda: runs_file.exists() and set(map(int, runs_file.read_text().split())) >= set(published),
             30, "every message to run")
    runs = [int(x) for x in runs_file.read_text().split()]
    assert sorted(runs) == sorted(set(runs)), "a message ran twice"
    assert set(runs) == set(published)


def test_sigterm_during_the_hand_over_is_acted_on_by_the_new_image(fleet, tmp_path):
    """SIGTERM, SIGINT, SIGHUP, SIGUSR2 and SIGCHLD stay blocked across the exec: a SIGTERM
    sent while the new interpreter starts is a clean stop once it is up, not a kill."""
    config = fleet.write_config({"shard": fleet.worker_role("sharded"), "single": fleet.worker_role("singleton")},
                                ttl=TTL)
    member = fleet.start("m0", config)
    wait_for(lambda: len(long_running(fleet)) == 2, 60, "the workers to start")
    member.signal(signal.SIGUSR2)
    wait_for(lambda: "upgrading to" in member.output(), 120, "the exec")
    member.term()
    assert member.wait(30) == 0
    assert "upgrade done" in member.output()
    stops = {r["pid"] for r in fleet.records() if r["event"] == "stop"}
    assert stops == set(long_running(fleet)), "every worker stopped cleanly (SIGTERM)"
