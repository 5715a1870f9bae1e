"""health, min_ready, needs, on_failed, step_down_after: defaults, and one line per problem."""

from __future__ import annotations

import pytest

from etcdvisor import config
from etcdvisor.config import ConfigError
from etcdvisor.config.health import stop_waves

HEAD = "cluster: c\netcd: {endpoints: 'memory://h'}\nroles:\n"


def load(tmp_path, roles: str):
    path = tmp_path / "c.yaml"
    path.write_text(HEAD + roles)
    return config.load(str(path))


def problem(tmp_path, roles: str) -> str:
    with pytest.raises(ConfigError) as err:
        load(tmp_path, roles)
    text = str(err.value)
    assert "\n" not in text.strip(), text
    return text


def test_defaults(tmp_path):
    cfg = load(tmp_path, "  a: {type: sharded, command: [x]}\n  s: {type: singleton, command: [x]}\n")
    a, s = cfg.roles["a"], cfg.roles["s"]
    assert a.min_ready == 2.0 and a.needs == () and a.on_failed == "stay" and a.step_down_after is None
    assert s.step_down_after == 30.0
    assert a.health.startup is None and not a.health.readiness_checked


def test_probe_defaults_and_kinds(tmp_path):
    cfg = load(tmp_path, """  a:
    type: sharded
    command: [x]
    min_ready: 500ms
    health:
      startup: {tcp: "127.0.0.1:{7000 + index}"}
      readiness: {http: "http://{host}:8000/ready", period: 2s, success_threshold: 2}
      liveness: {exec: [check, --deep], timeout: 3s, initial_delay: 1s}
      notify: true
      watchdog: 30s
      memory: 512MiB
""")
    health = cfg.roles["a"].health
    assert cfg.roles["a"].min_ready == 0.5
    assert (health.startup.kind, health.startup.period, health.startup.timeout,
            health.startup.failure_threshold, health.startup.success_threshold,
            health.startup.initial_delay) == ("tcp", 10.0, 1.0, 3, 1, 0.0)
    assert health.readiness.kind == "http" and health.readiness.success_threshold == 2
    assert health.liveness.argv == ("check", "--deep") and health.liveness.initial_delay == 1.0
    assert health.notify and health.watchdog == 30.0 and health.memory == 512 * 1024 * 1024
    assert health.readiness_checked


@pytest.mark.parametrize("roles, where, reason", [
    ("  a: {type: sharded, command: [x], needs: [b]}\n  b: {type: sharded, command: [x], needs: [a]}\n",
     "roles.a.needs", "cycle in needs: a -> b -> a"),
    ("  a: {type: sharded, command: [x], needs: [bb]}\n  b: {type: sharded, command: [x]}\n",
     "roles.a.needs[0]", "unknown role 'bb'"),
    ("  a: {type: sharded, command: [x], needs: [a]}\n", "roles.a.needs[0]", "cannot need itself"),
    ("  a: {type: sharded, command: [x], health: {liveness: {period: 1s}}}\n",
     "roles.a.health.liveness", "give exactly one of http, tcp or exec"),
    ("  a: {type: sharded, command: [x], health: {liveness: {http: 'http://x/', tcp: 'x:1'}}}\n",
     "roles.a.health.liveness", "give exactly one of http, tcp or exec"),
    ("  a: {type: sharded, command: [x], health: {readiness: {http: 'http://x:{port}/'}}}\n",
     "roles.a.health.readiness.http", "unknown placeholder {port}"),
    ("  a: {type: sharded, command: [x], health: {readiness: {tcp: 'nohostport'}}}\n",
     "roles.a.health.readiness.tcp", "is not HOST:PORT"),
    ("  a: {type: sharded, command: [x], health: {watchdog: 10s}}\n",
     "roles.a.health.watchdog", "needs notify: true"),
    ("  a: {type: sharded, command: [x], health: {liveness: {exec: [c], period: 0s}}}\n",
     "roles.a.health.liveness.period", "must be greater than zero"),
    ("  a: {type: sharded, command: [x], on_failed: leave}\n", "roles.a.on_failed", "leave"),
    ("  a: {type: sharded, command: [x], step_down_after: 5s}\n", "roles.a.step_down_after",
     "only applies to singleton roles"),
])
def test_problems_are_one_line_naming_the_key(tmp_path, roles, where, reason):
    text = problem(tmp_path, roles)
    assert f": {where}" in text and reason in text, text


def test_stop_waves_put_dependents_first():
    waves = stop_waves({"api": ("db",), "db": ("disk",), "disk": (), "web": ("api",), "cron": ()})
    assert waves == [{"web", "cron"}, {"api"}, {"db"}, {"disk"}]
