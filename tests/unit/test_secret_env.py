"""The etcd password's variable never reaches a child or helper (docs/safety.md rule 7)."""

from __future__ import annotations

import subprocess

import pytest

from etcdvisor import config
from etcdvisor.config import isolated
from etcdvisor.runtime.supervisor import StartupError, Supervisor


def test_check_child_sees_only_overrides_and_python_basics():
    env = {"PATH": "/bin", "ETCDVISOR_ENDPOINTS": "http://h:2379", "ETCD_PASSWORD": "s3cret",
           "PYTHONPATH": "/src", "LC_ALL": "C", "AWS_SECRET_ACCESS_KEY": "x", "HOME": "/root"}
    kept = isolated.check_environment(env)
    assert kept == {"PATH": "/bin", "ETCDVISOR_ENDPOINTS": "http://h:2379", "PYTHONPATH": "/src",
                    "LC_ALL": "C", "HOME": "/root"}
    assert "PYTHONPATH" not in isolated.check_environment(env, secret_names=("PYTHONPATH",))


def test_load_isolated_passes_the_filtered_environment(monkeypatch, tmp_path):
    seen = {}

    def fake_run(command, env=None, **kwargs):
        seen.update(env)
        return subprocess.CompletedProcess(command, 2, b"", b"boom")

    monkeypatch.setattr(isolated.subprocess, "run", fake_run)
    with pytest.raises(config.ConfigError):
        isolated.load_isolated(str(tmp_path / "c.yaml"), {"ETCD_PASSWORD": "s3cret", "PATH": "/bin"})
    assert seen == {"PATH": "/bin"}


def _config(tmp_path, etcd: str):
    path = tmp_path / "c.yaml"
    path.write_text(f"cluster: x\netcd: {{endpoints: 'memory://secret', username: u, {etcd}}}\n"
                    "roles:\n  w: {type: topic, command: [w]}\n")
    return config.load(path, {})


def test_supervisor_drops_the_password_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("ETCD_PASSWORD_T", "s3cret")
    cfg = _config(tmp_path, "password_env: ETCD_PASSWORD_T")
    sup = Supervisor(cfg, environ={"ETCD_PASSWORD_T": "s3cret", "PATH": "/bin"})
    assert sup._take_password() == "s3cret"
    assert "ETCD_PASSWORD_T" not in sup.environ
    import os
    assert os.environ["ETCD_PASSWORD_T"] == "s3cret"  # an explicit environ leaves os.environ alone
    own = Supervisor(cfg)
    assert own._take_password() == "s3cret"
    assert "ETCD_PASSWORD_T" not in os.environ and "ETCD_PASSWORD_T" not in own.environ


def test_missing_password_variable_is_one_line(tmp_path):
    cfg = _config(tmp_path, "password_env: ETCD_PASSWORD_MISSING")
    with pytest.raises(StartupError) as caught:
        Supervisor(cfg, environ={})._take_password()
    assert "ETCD_PASSWORD_MISSING" in str(caught.value) and "\n" not in str(caught.value)
