"""Good config files load into the expected dataclasses; env overrides; diff."""

from __future__ import annotations

import dataclasses
import signal
from pathlib import Path

import pytest

from etcdvisor import config
from etcdvisor.config import (
    BackoffSettings,
    ConfigError,
    EtcdKind,
    RestartPolicy,
    RoleSpec,
    RoleType,
    Schedule,
)
from etcdvisor.coord.url import TLSOptions

GOOD = Path(__file__).resolve().parents[1] / "data" / "good"


def load_good(name: str, environ=None, **kwargs):
    return config.load(GOOD / name, environ or {}, **kwargs)


def test_full_file_loads_every_key():
    cfg = load_good("full.yaml")
    here = str(GOOD)
    assert cfg.source_path == str(GOOD / "full.yaml")
    assert cfg.cluster == "orders"
    assert cfg.etcd == config.EtcdSettings(
        kind=EtcdKind.ETCD,
        endpoints=("https://10.0.0.1:2379", "https://10.0.0.2:2379"),
        tls=TLSOptions(ca=f"{here}/certs/ca.pem", cert=f"{here}/certs/client.pem",
                       key=f"{here}/certs/client.key", insecure_skip_verify=False),
        username="supervisor", password_file=f"{here}/secrets/etcd-password",
        timeout=2.5,
    )
    assert cfg.etcd.url == "https://10.0.0.1:2379,https://10.0.0.2:2379"
    assert cfg.member == config.MemberSettings(id="web-1", ttl=15, state_dir="/var/lib/etcdvisor")
    assert list(cfg.roles) == ["worker", "scheduler", "compact", "heartbeat", "migrate", "thumbnails"]
    assert cfg.role("worker") == RoleSpec(
        name="worker", type=RoleType.SHARDED, command=("python", "worker.py", "--verbose"),
        env={"LOG_LEVEL": "info", "BATCH": "100", "RATIO": "0.5", "DRY_RUN": "false"},
        cwd=f"{here}/app", restart=RestartPolicy.ON_FAILURE, stop_signal=signal.SIGINT,
        stop_timeout=10.0, backoff=BackoffSettings(initial=0.5, max=120.0), start_retries=3,
        after=("migrate",), wait_for=("warmup.done",), settle=2.0, handoff="fenced", processes=1,
    )
    scheduler = cfg.role("scheduler")
    assert (scheduler.standby, scheduler.stop_signal, scheduler.stop_timeout) == (True, signal.SIGUSR1, 4.5)
    assert scheduler.restart is RestartPolicy.ALWAYS and scheduler.settle is None
    compact = cfg.role("compact")
    assert compact.schedule == Schedule.parse("*/5 * * * *", "Europe/Berlin")
    assert (compact.timezone, compact.concurrency, compact.starting_deadline) == ("Europe/Berlin", "replace", 30.0)
    assert compact.restart is RestartPolicy.ON_FAILURE
    heartbeat = cfg.role("heartbeat")
    assert heartbeat.schedule == Schedule.parse("@every 1m30s")
    assert heartbeat.schedule.period.total_seconds() == 90.0
    assert (heartbeat.timezone, heartbeat.concurrency, heartbeat.starting_deadline) == ("UTC", "forbid", None)
    assert cfg.role("migrate").restart is RestartPolicy.NEVER
    topic = cfg.role("thumbnails")
    assert (topic.topic, topic.delivery, topic.concurrency, topic.max_payload, topic.max_attempts) == (
        "images.uploaded", "broadcast", 4, 10_000, 3)
    assert not topic.lease_bound and cfg.role("migrate").lease_bound


def test_minimal_file_gets_defaults(monkeypatch):
    cfg = load_good("minimal.yaml")
    assert cfg.etcd.kind is EtcdKind.ETCD and cfg.etcd.endpoints == ("http://127.0.0.1:2379",)
    assert cfg.etcd.timeout == 5.0 and cfg.etcd.tls is None
    assert cfg.member.ttl == 10 and cfg.member.state_dir == str(GOOD / ".etcdvisor")
    assert cfg.member.id_generated and cfg.member.id  # host name plus suffix
    worker = cfg.role("worker")
    assert worker == RoleSpec(name="worker", type=RoleType.SHARDED, command=("sleep", "60"), settle=1.0,
                              handoff="fenced", processes=1)
    assert worker.stop_signal == signal.SIGTERM and worker.restart is RestartPolicy.ALWAYS
    assert worker.start_retries == 5 and worker.backoff == BackoffSettings(1.0, 60.0)


def test_generated_member_ids_differ_unless_a_default_is_passed():
    first, second = load_good("minimal.yaml"), load_good("minimal.yaml")
    assert first.member.id != second.member.id
    kept = load_good("minimal.yaml", default_member_id=first.member.id)
    assert kept.member.id == first.member.id and kept.member.id_generated


def test_embedded_data_dir_defaults_under_state_dir():
    cfg = load_good("embedded.yaml")
    assert cfg.etcd.kind is EtcdKind.EMBEDDED and cfg.etcd.endpoints == ()
    assert cfg.etcd.url == "embedded"
    assert cfg.etcd.data_dir == str(GOOD / "state" / "etcd")
    assert cfg.roles == {}


def test_memory_endpoint():
    cfg = load_good("memory.yaml")
    assert (cfg.etcd.kind, cfg.etcd.memory_name, cfg.etcd.url) == (EtcdKind.MEMORY, "suite", "memory://suite")


def test_config_is_frozen_and_role_lookup_names_known_roles():
    cfg = load_good("minimal.yaml")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.cluster = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        cfg.roles["new"] = cfg.role("worker")  # type: ignore[index]
    with pytest.raises(TypeError):
        cfg.role("worker").env["X"] = "1"  # type: ignore[index]
    with pytest.raises(KeyError, match="roles: worker"):
        cfg.role("nope")


def test_environment_overrides_file():
    env = {"ETCDVISOR_ENDPOINTS": "https://a:1, https://b:2", "ETCDVISOR_CLUSTER": "payments",
           "ETCDVISOR_MEMBER_ID": "pod-7"}
    cfg = load_good("full.yaml", env)
    assert cfg.etcd.endpoints == ("https://a:1", "https://b:2")
    assert (cfg.cluster, cfg.member.id, cfg.member.id_generated) == ("payments", "pod-7", False)


def test_environment_override_may_switch_to_embedded_or_memory():
    assert load_good("minimal.yaml", {"ETCDVISOR_ENDPOINTS": "embedded"}).etcd.kind is EtcdKind.EMBEDDED
    cfg = load_good("embedded.yaml", {"ETCDVISOR_ENDPOINTS": "memory://x"})
    assert cfg.etcd.url == "memory://x" and cfg.etcd.data_dir is None


def test_empty_environment_values_are_ignored():
    cfg = load_good("full.yaml", {"ETCDVISOR_CLUSTER": "", "ETCDVISOR_MEMBER_ID": "  "})
    assert (cfg.cluster, cfg.member.id) == ("orders", "web-1")


def test_bad_environment_value_is_reported_under_the_variable():
    with pytest.raises(ConfigError) as caught:
        load_good("minimal.yaml", {"ETCDVISOR_CLUSTER": "Bad Name", "ETCDVISOR_ENDPOINTS": "ftp://x"})
    errors = caught.value.errors
    assert errors[0].startswith(f"{GOOD / 'minimal.yaml'}: ETCDVISOR_CLUSTER: 'Bad Name' is not valid")
    assert errors[1].startswith(f"{GOOD / 'minimal.yaml'}: ETCDVISOR_ENDPOINTS: invalid backend URL 'ftp://x'")


def test_os_environ_is_the_default(monkeypatch):
    monkeypatch.setenv("ETCDVISOR_CLUSTER", "from-env")
    assert config.load(GOOD / "minimal.yaml").cluster == "from-env"


def test_loading_twice_compares_equal_and_diff_is_empty():
    first, second = load_good("full.yaml"), load_good("full.yaml")
    assert first == second
    assert not config.diff(first, second)


def test_diff_reports_added_changed_removed_and_settings(tmp_path):
    old_text = (GOOD / "full.yaml").read_text()
    new_text = (old_text.replace("max_attempts: 3", "max_attempts: 4")
                .replace("  migrate:\n    type: job\n    command: [migrate, up]\n    restart: never\n",
                         "  migrate:\n    type: job\n    command: [migrate, up]\n    restart: never\n"
                         "  extra:\n    type: job\n    command: [extra]\n")
                .replace("  heartbeat:\n    type: cron\n    command: [beat]\n    schedule: \"@every 1m30s\"\n", "")
                .replace("ttl: 15", "ttl: 16"))
    (tmp_path / "new.yaml").write_text(new_text)
    change = config.diff(load_good("full.yaml"), config.load(tmp_path / "new.yaml", {}))
    assert change.added == ("extra",)
    # the new file lives elsewhere, so relative paths (worker's cwd, tls files) moved too
    assert change.changed == ("worker", "thumbnails")
    assert change.removed == ("heartbeat",)
    assert change.settings_changed == ("etcd.tls", "etcd.password_file", "member.ttl")
    assert change


def test_plain_http_override_under_tls_settings_is_refused():
    with pytest.raises(ConfigError, match=r"etcd\.tls: .* the endpoints \(from ETCDVISOR_ENDPOINTS\) use http://"):
        load_good("full.yaml", {"ETCDVISOR_ENDPOINTS": "http://a:1"})
