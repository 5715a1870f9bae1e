"""``supervisor services`` against a real etcd: instances in registration
order, one service, JSON, the applications view, and bad input in one line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from etcdvisor.cli import main
from etcdvisor.coord import open_backend
from etcdvisor.recipes.applications import ApplicationRoute
from etcdvisor.recipes.registry import Registry, ServiceInfo


@pytest.fixture
def cluster(etcd_prefix) -> str:
    return etcd_prefix.strip("/")


@pytest.fixture
def env(monkeypatch, etcd_url, cluster):
    monkeypatch.setenv("ETCDVISOR_ENDPOINTS", etcd_url)
    monkeypatch.setenv("ETCDVISOR_CLUSTER", cluster)


@pytest.fixture
def registry(etcd_url, cluster):
    backend = open_backend(etcd_url, timeout=5)
    reg = Registry.for_cluster(backend, cluster, ttl=5)
    yield reg
    reg.close()
    backend.close()


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_services_lists_instances_in_registration_order(capsys, env, registry):
    code, out, err = run_cli(capsys, "services")
    assert code == 0 and out == "" and "no service instances registered" in err
    assert run_cli(capsys, "services", "--json")[:2] == (0, "[]\n")
    registry.register(ServiceInfo(name="zeta", id="z1", address="10.0.0.9:9000", port=9000))
    registry.register(ServiceInfo(name="api", id="m2-api-0", address="10.0.0.2:8000", port=8000,
                                  metadata={"zone": "eu-1"}))
    registry.register(ServiceInfo(name="api", id="m1-api-1", address="10.0.0.1:8001", port=8001,
                                  version="1.2"))
    code, out, err = run_cli(capsys, "services")
    lines = out.splitlines()
    assert code == 0 and err == ""
    assert lines[0].split() == ["SERVICE", "ID", "ADDRESS", "PORT", "VERSION", "METADATA"]
    assert [line.split()[:2] for line in lines[1:]] == [["zeta", "z1"], ["api", "m2-api-0"], ["api", "m1-api-1"]]
    assert "zone=eu-1" in lines[2]
    code, out, _ = run_cli(capsys, "services", "api", "--json")
    docs = json.loads(out)
    assert code == 0 and [d["id"] for d in docs] == ["m2-api-0", "m1-api-1"]
    assert docs[0] == {"name": "api", "id": "m2-api-0", "address": "10.0.0.2:8000", "port": 8000,
                       "version": "", "metadata": {"zone": "eu-1"}}
    registry.deregister("api", "m2-api-0")
    code, out, _ = run_cli(capsys, "services", "api")
    assert [line.split()[1] for line in out.splitlines()[1:]] == ["m1-api-1"]


def test_services_applications_view(capsys, env, registry):
    code, out, err = run_cli(capsys, "services", "--applications")
    assert code == 0 and out == "" and "no applications registered" in err
    registry.register_application(ApplicationRoute("web", "m1", weight=10, mode="permanent", state="running"))
    registry.register_application(ApplicationRoute("web", "m2", weight=5))
    registry.register_application(ApplicationRoute("batch", "m1", state="stopping"))
    code, out, _ = run_cli(capsys, "services", "--applications")
    rows = [line.split() for line in out.splitlines()]
    assert code == 0 and rows == [["APPLICATION", "NODE", "WEIGHT", "MODE", "STATE"],
                                  ["web", "m1", "10", "permanent", "running"],
                                  ["web", "m2", "5", "temporary", "loaded"],
                                  ["batch", "m1", "0", "temporary", "stopping"]]
    code, out, _ = run_cli(capsys, "services", "web", "--applications", "--json")
    assert code == 0 and json.loads(out) == [
        {"name": "web", "node": "m1", "weight": 10, "mode": "permanent", "state": "running"},
        {"name": "web", "node": "m2", "weight": 5, "mode": "temporary", "state": "loaded"}]


def test_services_bad_name_and_unreachable_etcd_are_one_line(capsys, env, monkeypatch):
    code, _, err = run_cli(capsys, "services", "../etc")
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    monkeypatch.setenv("ETCDVISOR_ENDPOINTS", "http://127.0.0.1:1")
    code, _, err = run_cli(capsys, "services")
    assert code == 1 and err.startswith("error: ") and "Traceback" not in err


def test_services_in_a_real_subprocess(env, registry):
    """As a child of a supervisor would call it (its environment names the cluster)."""
    registry.register(ServiceInfo(name="api", id="sub-0", address="h:1", port=1))
    done = subprocess.run([sys.executable, "-m", "etcdvisor.cli", "services", "api", "--json"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert [d["id"] for d in json.loads(done.stdout)] == ["sub-0"]
