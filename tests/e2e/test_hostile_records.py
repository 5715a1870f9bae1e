"""Hostile records in etcd against real ``supervisor run`` members (issue 16, class 2):
nested, mistyped and non-finite records are skipped with one warning naming their key,
never stop a watcher or a verb, and the next valid record still acts."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from .conftest import pid_alive, wait_for
from .harness_roles import cli, recorder, status_json  # noqa: F401
from .test_seed_wiring import hups, instances, seed_role, starts

pytestmark = [pytest.mark.etcd]

NESTED = b"[" * 5000


def strict(text: str | bytes):
    """Parse as strict JSON: NaN/Infinity fail the test."""
    return json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in JSON output"))


def live(recorder, role: str) -> list[dict]:
    return [r for r in recorder.starts(role) if pid_alive(r["pid"], r["t"])]


def test_nested_control_records_do_not_stop_restart_or_status(fleet, recorder):
    config = fleet.write_config({"worker": recorder.role("sharded", sleep=600, settle=0)})
    member = fleet.start("m0", config)
    first = wait_for(lambda: live(recorder, "worker"), 30, "the worker")
    control = f"/etcdvisor/{fleet.cluster}/control/"
    backend = fleet.backend()
    backend.put(control + "worker/restart", NESTED)
    backend.put(control + "worker/reset", NESTED)  # stays: in every later snapshot of the watcher
    backend.put(control + "worker/trigger", json.dumps({"verb": "trigger", "role": "worker", "id": "x",
                                                         "when": "now"}))
    member.wait_output(f"skipping control record {control}worker/reset", 15)
    doc = strict(cli("status", "-c", str(config), "--json").stdout)
    assert "error" in doc["control"]["worker"]["reset"]
    assert live(recorder, "worker") == first, "a bad record restarted the worker"

    issued = time.time()
    result = cli("restart", "worker", "-c", str(config))
    assert result.returncode == 0, result.stderr.decode()
    wait_for(lambda: [r for r in live(recorder, "worker") if r["t"] > issued], 20, "the restart to act")
    assert not pid_alive(first[0]["pid"], first[0]["t"])
    doc = status_json(config)
    assert doc["control"]["worker"]["restart"]["who"] and "error" in doc["control"]["worker"]["reset"]
    warned = member.output().count(f"skipping control record {control}worker/reset")
    assert warned == 1, f"the bad record was reported {warned} times"
    assert "Traceback" not in member.output() and "RecursionError" not in member.output()


def test_trigger_with_when_in_milliseconds_is_skipped_and_cron_stays_running(fleet, recorder):
    config = fleet.write_config({"report": recorder.role("cron", schedule="0 0 1 1 *", sleep=0.1)})
    member = fleet.start("m0", config)

    def leader_state():
        doc = status_json(config) if fleet.backend().get_prefix(fleet.member_key("m0")).kvs else None
        assignments = doc["roles"]["report"]["assignments"] if doc else []
        return assignments and assignments[0]["leader"] and assignments[0]
    wait_for(leader_state, 30, "m0 to lead the cron role")
    key = f"/etcdvisor/{fleet.cluster}/control/report/trigger"
    now = time.time()
    fleet.backend().put(key, json.dumps({"verb": "trigger", "role": "report", "id": "ms-1", "who": "x@y",
                                         "host": "y", "when": now * 1000, "at": "", "member": None,
                                         "index": None}))
    member.wait_output(f"skipping control record {key}", 15)
    issued = time.time()
    result = cli("trigger", "report", "-c", str(config))
    assert result.returncode == 0, result.stderr.decode()
    runs = wait_for(lambda: recorder.ends("report"), 15, "the valid trigger's run")
    assert len(recorder.starts("report")) == 1 and runs[0]["t"] >= issued
    state = leader_state()
    assert state["state"] == "leader" and state["failed"] is None, state  # not FAILED
    assert "out of range" not in member.output()


def test_hostile_registry_records_skip_not_freeze_peers_and_services(fleet):
    rec = fleet.dir / "seed.jsonl"
    peers_file = fleet.dir / "gw" / "peers" / "api.json"
    (fleet.dir / "gw").mkdir()
    roles = {
        "api": seed_role(fleet, "sharded", rec, register={"service": "api", "address": "{host}:{port}",
                                                          "port": 8000}),
        "gateway": seed_role(fleet, "singleton", rec, cwd=str(fleet.dir / "gw"),
                             peers={"api": {"file": "peers/api.json", "on_change": "signal:HUP"}}),
    }
    roles["gateway"]["env"]["SEED_PEERS"] = str(peers_file)
    config = fleet.write_config(roles)
    member = fleet.start("m0", config)
    wait_for(lambda: len(instances(fleet, "api")) == 1, 30, "m0's instance")
    (mine,) = instances(fleet, "api")
    wait_for(lambda: starts(rec, role="gateway"), 30, "the gateway")
    gateway = starts(rec, role="gateway")[0]

    prefix = f"/etcdvisor/{fleet.cluster}/services/api/instances/"
    good = {"name": "api", "id": "x", "address": "10.0.0.1", "port": 1, "version": "", "metadata": {}}
    hostile = {
        "nested": NESTED,
        "port-text": json.dumps({**good, "id": "port-text", "port": "http"}).encode(),
        "port-float": json.dumps({**good, "id": "port-float", "port": 80.0}).encode(),
        "address-object": json.dumps({**good, "id": "address-object", "address": {"h": 1}}).encode(),
        "metadata-list": json.dumps({**good, "id": "metadata-list", "metadata": [1]}).encode(),
        "port-nan": json.dumps({**good, "id": "port-nan"}).encode().replace(b'"port": 1', b'"port": NaN'),
        "meta-inf": json.dumps({**good, "id": "meta-inf", "metadata": {"w": 1}}).encode().replace(
            b'"w": 1', b'"w": Infinity'),
    }
    backend = fleet.backend()
    for name, raw in hostile.items():
        backend.put(prefix + name, raw)
    backend.put(prefix + "valid", json.dumps({**good, "id": "valid"}))  # the next valid record acts

    def peers_ids():
        return [p["id"] for p in strict(peers_file.read_text())] if peers_file.exists() else None
    wait_for(lambda: peers_ids() == [mine["id"], "valid"], 15, "the peers file with the valid instances")
    wait_for(lambda: any([p["id"] for p in h["peers"]] == [mine["id"], "valid"]
                         for h in hups(rec, gateway["pid"])), 10, "HUP with the valid instances")
    listed = cli("services", "api", "--json", "-c", str(config))
    assert listed.returncode == 0, listed.stderr.decode()
    assert [i["id"] for i in strict(listed.stdout)] == [mine["id"], "valid"]
    for name in hostile:
        assert f"{prefix}{name}" in listed.stderr.decode(), f"no warning for {name}"
        assert member.output().count(f"skipping registry record {prefix}{name} ") == 1, name
    table = cli("services", "-c", str(config))
    assert table.returncode == 0 and "port-text" not in table.stdout.decode()


@pytest.mark.parametrize("argv", [
    ("nan", "--type", "float"), ("inf", "--type", "float"), ("Infinity", "--type", "float"),
    ("1e999", "--type", "float"), ("NaN", "--type", "json"), ('{"a": [Infinity]}', "--type", "json"),
    ("[" * 5000, "--type", "json"), ("float:nan",),
])
def test_config_set_refuses_non_finite_and_nested_values(fleet, argv):
    config = fleet.write_config({})
    result = cli("config", "set", "limit", *argv, "-c", str(config))
    err = result.stderr.decode()
    assert result.returncode == 2, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err
    assert not fleet.backend().get_prefix("/etcdvisor/_shared/config/cluster/" + fleet.cluster + "/").kvs


def test_status_json_is_strict_with_hostile_member_and_tick_records(fleet, recorder):
    config = fleet.write_config({"report": recorder.role("cron", schedule="0 0 1 1 *")})
    fleet.start("m0", config)
    wait_for(lambda: fleet.backend().get_prefix(fleet.member_key("m0")).kvs, 30, "m0 to join")
    base = f"/etcdvisor/{fleet.cluster}/"
    backend = fleet.backend()
    backend.put(base + "roles/report/ticks/2024-01-01T00:00:00Z",
                b'{"state": "succeeded", "finished": 1e300, "started": NaN}')
    backend.put(base + "roles/report/ticks/2024-01-02T00:00:00Z", NESTED)
    backend.put(base + "roles/report/job", b'{"spec_hash": "x", "state": "failed", "finished": 1700000000000}')
    for argv in (("--json",), ()):
        result = cli("status", "-c", str(config), *argv)
        assert result.returncode == 0, result.stderr.decode()
        assert "Traceback" not in result.stderr.decode()
    doc = strict(cli("status", "-c", str(config), "--json").stdout)
    assert doc["roles"]["report"]["ticks"]["retained"] == 2 and doc["roles"]["report"]["job"]["error"]
    assert Path(sys.executable).exists()


def test_config_list_skips_a_hostile_item_and_get_names_it(fleet):
    config = fleet.write_config({})
    scope = f"/etcdvisor/_shared/config/cluster/{fleet.cluster}/"
    backend = fleet.backend()
    backend.put(scope + "good", "int:5")
    backend.put(scope + "nan", "float:nan")
    backend.put(scope + "deep", "json:" + "[" * 5000)
    listed = cli("config", "list", "--json", "-c", str(config))
    err = listed.stderr.decode()
    assert listed.returncode == 0, err
    listed_items = strict(listed.stdout)  # global items of other tests on this etcd may show too
    assert listed_items["good"] == {"scope": "cluster", "value": 5}
    assert "nan" not in listed_items and "deep" not in listed_items
    lines = err.splitlines()
    assert all(line.startswith("warning: skipping config key ") for line in lines), err
    assert [line for line in lines if scope in line] == [
        line for line in lines if scope + "deep:" in line or scope + "nan:" in line] and len(
        [line for line in lines if scope in line]) == 2, err
    got = cli("config", "get", "deep", "-c", str(config))
    err = got.stderr.decode()
    assert got.returncode == 1 and len(err.strip().splitlines()) == 1 and scope + "deep" in err, err
    assert "Traceback" not in err and "RecursionError" not in err
