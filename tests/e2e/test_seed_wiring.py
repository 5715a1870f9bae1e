"""e2e (issue 11): role ``config:``, ``register:`` and ``peers:`` with real
``supervisor run`` processes, the ``config`` verb and real etcd."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

from .conftest import wait_for
from .harness_roles import cli, status_json

CHILD = Path(__file__).with_name("seed_child.py")
SETTLE = "0.2s"


def records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def seed_role(fleet, type_: str, record: Path, variables=(), **keys) -> dict:
    role = {"type": type_, "command": [sys.executable, str(CHILD)], "stop_timeout": "0.5s",
            "env": {"SEED_RECORD": str(record), "SEED_VARS": ",".join(variables)}}
    if type_ == "sharded":
        role["settle"] = SETTLE
    role.update(keys)
    return role


def config_cli(config: Path, *args: str):
    result = cli("config", *args, "-c", str(config))
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result


def starts(path: Path, **match) -> list[dict]:
    return [r for r in records(path) if r["event"] == "start" and all(r.get(k) == v for k, v in match.items())]


def hups(path: Path, pid: int) -> list[dict]:
    return [r for r in records(path) if r["event"] == "hup" and r["pid"] == pid]


def live_children(path: Path) -> dict[str, dict]:
    """member -> its latest start record whose pid has not recorded a stop."""
    stopped = {r["pid"] for r in records(path) if r["event"] == "stop"}
    latest = {}
    for r in starts(path):
        if r["pid"] not in stopped:
            latest[r["member"]] = r
    return latest


def test_config_scopes_actions_and_batching(fleet):
    tag = os.urandom(3).hex()  # the global scope is shared by every test cluster
    port, level, feats = f"db{tag}.port", f"log{tag}.level", f"feat{tag}"
    rec = fleet.dir / "seed.jsonl"
    role = seed_role(fleet, "sharded", rec, ("DB_PORT", "LOG_LEVEL", "FEATURES"), config={
        "DB_PORT": {"item": port, "default": 5432, "on_change": "restart"},
        "LOG_LEVEL": {"item": level, "default": "info", "on_change": "signal:HUP"},
        "FEATURES": {"item": feats, "on_change": "none"}})
    config = fleet.write_config({"api": role})
    fleet.start("m0", config)
    fleet.start("m1", config)
    wait_for(lambda: {r["index"] for r in live_children(rec).values()} == {"0", "1"}, 30, "2 shards")
    first = live_children(rec)
    for r in first.values():
        assert r["env"] == {"DB_PORT": "5432", "LOG_LEVEL": "info", "FEATURES": None}
        assert r["config"] == {"DB_PORT": 5432, "LOG_LEVEL": "info", "FEATURES": None}
    pids = {m: r["pid"] for m, r in first.items()}

    def hup_values(member):
        return [h["config"]["LOG_LEVEL"] for h in hups(rec, pids[member])]

    # global, then cluster overrides global, then member overrides cluster
    for scope_args, expect in ((("--global",), {"m0": "debug", "m1": "debug"}),
                               (("--cluster",), {"m0": "warn", "m1": "warn"}),
                               (("--member", "m1"), {"m0": "warn", "m1": "error"})):
        value = expect[scope_args[-1]] if scope_args[0] == "--member" else expect["m0"]
        config_cli(config, "set", level, value, *scope_args)
        set_at = time.time()
        for member, wanted in expect.items():
            if hup_values(member)[-1:] != [wanted] and (scope_args[0] != "--member" or member == "m1"):
                wait_for(lambda m=member, w=wanted: hup_values(m)[-1:] == [w], 10, f"{member} HUP {wanted}")
                got = next(h for h in hups(rec, pids[member]) if h["config"]["LOG_LEVEL"] == wanted)
                assert got["t"] - set_at < 1.0, f"{member}: {got['t'] - set_at:.2f}s after the CLI returned"
    time.sleep(0.5)  # the contract: no further HUP (a short while to show it)
    assert hup_values("m0") == ["debug", "warn"]  # the member override of m1 did not touch m0
    assert hup_values("m1") == ["debug", "warn", "error"]
    got = json.loads(config_cli(config, "get", level, "--member", "m1", "--json").stdout)
    assert got == {"value": "error", "scope": "member"}
    assert json.loads(config_cli(config, "get", level, "--json").stdout) == {"value": "warn", "scope": "cluster"}

    # none: the file changes, nothing restarts, no signal
    config_cli(config, "set", feats, '["a", 1]', "--type", "json")
    for member, r in first.items():
        wait_for(lambda p=r["config_file"]: json.loads(Path(p).read_text())["FEATURES"] == ["a", 1], 10,
                 f"{member}'s file")
    # restart: exactly the affected child restarts, with the new value in env and file
    config_cli(config, "set", port, "6000", "--type", "int", "--member", "m0")
    # between the stop and the restart m0 has no live child: wait for the new one
    wait_for(lambda: live_children(rec).get("m0", {}).get("pid", pids["m0"]) != pids["m0"], 15,
             "m0's child restarted")
    time.sleep(0.5)  # the contract: only m0's child restarts (a short while to show it)
    now = live_children(rec)
    assert now["m1"]["pid"] == pids["m1"]
    assert now["m0"]["env"]["DB_PORT"] == "6000" and now["m0"]["config"]["DB_PORT"] == 6000
    assert now["m0"]["env"]["FEATURES"] == '["a",1]' and now["m0"]["config"]["FEATURES"] == ["a", 1]
    known = {r["pid"] for r in first.values()}
    later = [r for r in starts(rec) if r["t"] > min(r["t"] for r in first.values()) and r["pid"] not in known]
    assert [r["member"] for r in later] == ["m0"]  # exactly one restart
    assert len(hups(rec, pids["m1"])) == 3
    listed = json.loads(config_cli(config, "list", "--member", "m0", "--json").stdout)
    assert listed[port] == {"value": 6000, "scope": "member"}


def test_changes_arriving_together_are_one_action(fleet):
    tag = os.urandom(3).hex()
    rec = fleet.dir / "seed.jsonl"
    role = seed_role(fleet, "singleton", rec, ("A", "B"), config={
        "A": {"item": f"a{tag}", "default": 1, "on_change": "signal:HUP"},
        "B": {"item": f"b{tag}", "default": 2, "on_change": "signal:HUP"}})
    config = fleet.write_config({"solo": role})
    fleet.start("m0", config)
    wait_for(lambda: starts(rec), 30, "the child")
    pid = starts(rec)[0]["pid"]
    backend = fleet.backend()
    from etcdvisor.runtime.role_config import layered_config

    layered = layered_config(backend, fleet.cluster, None, "etcdvisor")
    from etcdvisor.coord.types import Put

    backend.txn((), [Put(layered.key(f"a{tag}"), "int:10"), Put(layered.key(f"b{tag}"), "int:20")])
    wait_for(lambda: hups(rec, pid), 10, "a HUP")
    time.sleep(0.5)  # the contract: one HUP for both changes (a short while to show no second)
    assert [h["config"] for h in hups(rec, pid)] == [{"A": 10, "B": 20}]


def test_ergo_layout_typed_values(fleet):
    tag = os.urandom(3).hex()
    rec = fleet.dir / "seed.jsonl"
    role = seed_role(fleet, "singleton", rec, ("PORT", "RATIO", "DEBUG", "LEVEL"), config={
        "PORT": {"item": f"database.port{tag}"}, "RATIO": {"item": f"cache.ratio{tag}"},
        "DEBUG": {"item": f"debug.enabled{tag}"}, "LEVEL": {"item": f"log.level{tag}", "on_change": "none"}})
    config = fleet.write_config({"solo": role}, config_layout="ergo")
    backend = fleet.backend()
    c = fleet.cluster
    # as etcdctl would write them: plain bytes in the registrar's own key layout
    backend.put(f"services/ergo/cluster/{c}/config/m0/database.port{tag}", b"int:42")
    backend.put(f"services/ergo/cluster/{c}/config/*/database.port{tag}", b"int:1")
    backend.put(f"services/ergo/cluster/{c}/config/*/cache.ratio{tag}", b"float:0.75")
    backend.put(f"services/ergo/config/global/debug.enabled{tag}", b"bool:true")
    backend.put(f"services/ergo/config/{c}/m0/log.level{tag}", b"info")  # cross-cluster node level
    backend.put(f"services/ergo/cluster/{c}/config/m0/log.level{tag}", b"debug")
    try:
        fleet.start("m0", config)
        wait_for(lambda: starts(rec), 30, "the child")
        first = starts(rec)[0]
        assert first["config"] == {"PORT": 42, "RATIO": 0.75, "DEBUG": True, "LEVEL": "info"}
        assert first["env"] == {"PORT": "42", "RATIO": "0.75", "DEBUG": "true", "LEVEL": "info"}
        got = json.loads(config_cli(config, "get", f"database.port{tag}", "--member", "m0", "--json").stdout)
        assert got == {"value": 42, "scope": "member"}
    finally:
        backend.delete(f"services/ergo/config/global/debug.enabled{tag}")


def instances(fleet, service: str) -> list[dict]:
    prefix = f"/etcdvisor/{fleet.cluster}/services/{service}/instances/"
    kvs = sorted(fleet.backend().get_prefix(prefix).kvs, key=lambda kv: kv.create_revision)
    return [json.loads(kv.value) for kv in kvs]


def test_register_and_peers_follow_children(fleet):
    rec = fleet.dir / "seed.jsonl"
    peers_file = fleet.dir / "gw" / "peers" / "api.json"
    (fleet.dir / "gw").mkdir()
    roles = {
        "api": seed_role(fleet, "sharded", rec, register={
            "service": "api", "address": "{host}:{port}", "port": "8000 + {index}", "meta": {"zone": "eu-1"}}),
        "gateway": seed_role(fleet, "singleton", rec, cwd=str(fleet.dir / "gw"),
                             peers={"api": {"file": "peers/api.json", "on_change": "signal:HUP"}}),
    }
    roles["gateway"]["env"]["SEED_PEERS"] = str(peers_file)
    config = fleet.write_config(roles)
    m0 = fleet.start("m0", config)
    wait_for(lambda: len(instances(fleet, "api")) == 1, 30, "m0's instance")
    (inst,) = instances(fleet, "api")
    assert inst["port"] == 8000 and inst["address"].endswith(":8000") and inst["metadata"]["zone"] == "eu-1"
    wait_for(lambda: starts(rec, role="gateway"), 30, "the gateway")
    gateway = starts(rec, role="gateway")[0]
    assert isinstance(gateway["peers"], list)  # the file existed before the child started
    if [p["id"] for p in gateway["peers"]] != [inst["id"]]:  # started before api registered
        wait_for(lambda: any([p["id"] for p in h["peers"]] == [inst["id"]] for h in hups(rec, gateway["pid"])),
                 10, "HUP with m0's instance")
    wait_for(lambda: [r for a in status_json(config)["roles"]["api"]["assignments"]
                      for r in a.get("registered") or ()], 15, "status to show the instance")
    (shown,) = [r for a in status_json(config)["roles"]["api"]["assignments"] for r in a["registered"]]
    assert shown == {"service": "api", "id": inst["id"], "address": inst["address"], "port": 8000}
    text = cli("status", "-c", str(config)).stdout.decode()
    assert f"registered: api {inst['id']} at {inst['address']}" in text
    listed = cli("services", "api", "--json", "-c", str(config))
    assert listed.returncode == 0 and [i["id"] for i in json.loads(listed.stdout)] == [inst["id"]]

    # m1 gets its own working directory for the gateway, as every member of a real
    # deployment has: members sharing one directory would each write the same peers file
    # with their own view, and a late write of an older view can land after the HUP
    # (docs/config-reference.md, peers)
    (fleet.dir / "gw_m1").mkdir()
    roles["gateway"]["cwd"] = str(fleet.dir / "gw_m1")
    m1 = fleet.start("m1", fleet.write_config(roles, name="config_m1.yaml"))  # scale up
    wait_for(lambda: sorted(i["port"] for i in instances(fleet, "api")) == [8000, 8001], 30, "2 instances")
    wait_for(lambda: len(json.loads(peers_file.read_text())) == 2, 10, "peers file with 2")
    wait_for(lambda: any(len(h["peers"]) == 2 for h in hups(rec, gateway["pid"])), 10, "HUP with 2 peers")
    assert json.loads(peers_file.read_text()) == [
        {k: v for k, v in i.items()} for i in instances(fleet, "api")]  # registration order

    killed_at = m1.kill()  # scale down the hard way: the member's lease takes its instance
    wait_for(lambda: len(instances(fleet, "api")) == 1, 4 + 5, "m1's instance gone")
    gone_after = time.time() - killed_at
    assert gone_after < 4 + 1, f"instance gone {gone_after:.1f}s after SIGKILL (ttl 4s)"
    wait_for(lambda: len(json.loads(peers_file.read_text())) == 1, 10, "peers file with 1")
    wait_for(lambda: any(len(h["peers"]) == 1 for h in hups(rec, gateway["pid"])), 10, "HUP with 1 peer")

    m0.term()
    assert m0.wait(20) == 0
    assert instances(fleet, "api") == []


def test_config_verb_errors_unset_and_watch(fleet):
    import subprocess

    tag = os.urandom(3).hex()
    config = fleet.write_config({})
    item = f"verb{tag}"
    bad = cli("config", "set", item, "12x", "--type", "int", "-c", str(config))
    assert bad.returncode == 2 and bad.stderr.decode().count("\n") == 1 and b"Traceback" not in bad.stderr
    missing = cli("config", "get", item, "-c", str(config))
    assert missing.returncode == 1 and b"not set" in missing.stderr
    assert cli("config", "set", "-c", str(config)).returncode == 2  # no ITEM
    watcher = subprocess.Popen([sys.executable, "-m", "etcdvisor.cli", "config", "watch", "--member", "m9",
                                "--json", "--count", "3", "-c", str(config)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert b"watching" in watcher.stderr.readline()  # the baseline is read: changes from here on
        config_cli(config, "set", item, "int:5")
        config_cli(config, "set", item, "true", "--type", "bool", "--member", "m9", "--allow-unknown-member")
        # not m9: not reported
        config_cli(config, "set", item, "7", "--type", "int", "--member", "m8", "--allow-unknown-member")
        config_cli(config, "unset", item, "--member", "m9")
        config_cli(config, "unset", item)
        out, err = watcher.communicate(timeout=30)
    finally:
        watcher.kill()
    assert watcher.returncode == 0, err
    assert [json.loads(line) for line in out.decode().splitlines()] == [
        {"item": item, "value": 5, "unset": False}, {"item": item, "value": True, "unset": False},
        {"item": item, "value": 5, "unset": False}]
    text = config_cli(config, "list").stdout.decode()
    assert item not in text
    assert b"was not set" in config_cli(config, "unset", item).stdout


def test_reload_adds_config_and_peers_to_a_role(fleet):
    tag = os.urandom(3).hex()
    rec = fleet.dir / "seed.jsonl"
    peers_file = fleet.dir / "peers.json"
    api = seed_role(fleet, "sharded", rec, register={"service": "api", "port": 7000})
    solo = seed_role(fleet, "singleton", rec, ("LEVEL",))
    config = fleet.write_config({"api": api, "solo": solo})
    member = fleet.start("m0", config)
    wait_for(lambda: starts(rec, role="solo") and instances(fleet, "api"), 30, "both roles")
    config_cli(config, "set", f"level{tag}", "debug")
    solo = dict(solo, config={"LEVEL": {"item": f"level{tag}", "on_change": "signal:HUP"}},
                peers={"api": {"file": str(peers_file)}})
    solo["env"] = dict(solo["env"], SEED_PEERS=str(peers_file))
    fleet.write_config({"api": api, "solo": solo})
    member.signal(signal.SIGHUP)
    wait_for(lambda: [r for r in starts(rec, role="solo") if r["env"]["LEVEL"] == "debug"], 30,
             "the solo child restarted with the config")
    (new,) = [r for r in starts(rec, role="solo") if r["env"]["LEVEL"] == "debug"]
    assert new["config"] == {"LEVEL": "debug"}
    assert [p["port"] for p in new["peers"]] == [7000]  # the peers file existed before the start
    config_cli(config, "set", f"level{tag}", "warn")
    wait_for(lambda: [h for h in hups(rec, new["pid"]) if h["config"] == {"LEVEL": "warn"}], 10, "HUP")


def test_config_get_with_a_config_reports_the_roles_default_when_no_scope_sets_it(fleet):
    """Children get a role's ``default`` when no scope sets the item: ``config get -c``
    says so (scope ``default``, exit 0) instead of 'not set' (issue 19, 1.9)."""
    tag = os.urandom(3).hex()
    item = f"log.level{tag}"
    role = {"type": "sharded", "command": ["true"], "stop_timeout": "0.5s",
            "config": {"LOG_LEVEL": {"item": item, "default": "info"}}}
    config = fleet.write_config({"api": role})
    got = cli("config", "get", item, "-c", str(config))
    assert got.returncode == 0 and got.stdout.decode() == "info  (default)\n", got
    got = cli("config", "get", item, "--json", "-c", str(config))
    assert json.loads(got.stdout) == {"value": "info", "scope": "default"}
    config_cli(config, "set", item, "debug")
    assert json.loads(cli("config", "get", item, "--json", "-c", str(config)).stdout) == {
        "value": "debug", "scope": "cluster"}, "a scope that sets it wins over the default"
    other = cli("config", "get", f"other{tag}", "-c", str(config))
    assert other.returncode == 1 and b"not set in any scope" in other.stderr
