"""Role keys config/register/peers and config_layout (issue 11): what loads, and
one line per problem for what does not."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
import yaml

from etcdvisor.config import ConfigError, load
from etcdvisor.config.model import ChangeAction

API = {"type": "sharded", "command": ["true"],
       "config": {"DB_PORT": {"item": "database.port", "default": 5432, "on_change": "restart"},
                  "LOG_LEVEL": {"item": "log.level", "default": "info", "on_change": "signal:HUP"},
                  "FEATURES": {"item": "features", "on_change": "none"}},
       "register": {"service": "api", "address": "{host}:{port}", "port": "8000 + {index}",
                    "meta": {"zone": "eu-1", "where": "{member}"}}}
GATEWAY = {"type": "singleton", "command": ["true"],
           "peers": {"api": {"file": "peers/api.json", "on_change": "signal:HUP"}}}


def write(tmp_path, roles, **top):
    path = tmp_path / "c.yaml"
    doc = {"cluster": "c", "etcd": {"endpoints": "memory://x"}, "roles": roles, **top}
    path.write_text(yaml.safe_dump(doc))
    return path


def problems(tmp_path, roles, **top) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, roles, **top))
    return info.value.errors


def test_the_issue_example_loads(tmp_path):
    config = load(write(tmp_path, {"api": API, "gateway": GATEWAY}, config_layout="ergo"))
    assert config.config_layout == "ergo" and config.warnings == ()
    api = config.role("api")
    assert api.config["DB_PORT"].default == 5432 and api.config["DB_PORT"].on_change.action is ChangeAction.RESTART
    assert api.config["LOG_LEVEL"].on_change.signal == signal.SIGHUP
    assert str(api.config["LOG_LEVEL"].on_change) == "signal:HUP"
    assert api.config["FEATURES"].default is None
    assert api.register.port_base == 8000 and api.register.port_for(3) == 8003
    assert config.role("gateway").peers["api"].file == "peers/api.json"
    assert load(write(tmp_path, {"api": API})).config_layout == "etcdvisor"


def with_(role, **keys):
    return {**role, **keys}


@pytest.mark.parametrize("roles, where, reason", [
    ({"api": with_(API, config={"X": {"item": "x", "on_change": "reboot"}})},
     "roles.api.config.X.on_change", "unknown on_change 'reboot' (use restart, none or signal:NAME)"),
    ({"api": with_(API, config={"X": {"item": "x", "on_change": "signal:BOGUS"}})},
     "roles.api.config.X.on_change", "'BOGUS' is not a known signal"),
    ({"api": with_(API, config={"INDEX": {"item": "x"}})},
     "roles.api.config.INDEX", "set by the supervisor"),
    ({"api": with_(API, config={"SHARDS": {"item": "x"}})},  # the one reserved list (config/model.py)
     "roles.api.config.SHARDS", "set by the supervisor"),
    ({"api": with_(API, register={"service": "api", "port": "8000 + {idx}"})},
     "roles.api.register.port", "is not an integer or 'BASE + {index}'"),
    ({"api": with_(API, register={"service": "api", "port": 70000})},
     "roles.api.register.port", "is not a port number"),
    ({"api": with_(API, register={"service": "api", "port": 1.5})},
     "roles.api.register.port", ""),
    ({"api": with_(API, register={"service": "api", "port": 8080.0})},  # integers are integers
     "roles.api.register.port", "expected an integer or a string, got 8080.0"),
    ({"api": with_(API, shards=8, register={"service": "api", "port": "65530 + {index}"})},
     "roles.api.register.port", "'65530 + {index}' goes past port 65535 (INDEX 7 would register port 65537)"),
    ({"api": with_(API, processes=3, register={"service": "api", "port": "65534 + {index}"})},
     "roles.api.register.port", "goes past port 65535"),
    ({"api": with_(API, register={"service": "api", "port": 80, "address": "{hostname}:{port}"})},
     "roles.api.register.address", "unknown placeholder {hostname}"),
    ({"api": with_(API, register={"service": "api", "port": 80, "address": "{host:d}:{port}"})},
     "roles.api.register.address", "write placeholders plainly"),
    ({"api": with_(API, register={"service": "api", "port": 80, "address": "{host!r}"})},
     "roles.api.register.address", "write placeholders plainly"),
    ({"api": with_(API, register={"service": "api", "port": 80, "address": "{port"})},
     "roles.api.register.address", "is not a valid template"),
    ({"api": with_(API, register={"service": "api", "port": 80, "meta": {"a": "{zone}"}})},
     "roles.api.register.meta.a", "unknown placeholder {zone}"),
    ({"api": API, "api2": with_(API, register={"service": "api", "port": 8005})},
     "roles.api2.register.port", "service 'api' is also registered by role 'api'"),
    ({"api": with_(API, processes=2, register={"service": "api", "port": 8000})},
     "roles.api.register.port", "several children on one member"),
    ({"api": with_(API, shards=4, register={"service": "api", "port": 8000})},
     "roles.api.register.port", "several children on one member"),
    ({"gateway": with_(GATEWAY, peers={"api": {"file": "x", "on_change": "signal:NOPE"}})},
     "roles.gateway.peers.api.on_change", "'NOPE' is not a known signal"),
])
def test_one_line_per_problem(tmp_path, roles, where, reason):
    errors = problems(tmp_path, roles)
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"{tmp_path / 'c.yaml'}: {where}: ") and reason in errors[0], errors


def test_bad_layout_and_distinct_ports(tmp_path):
    assert "config_layout" in problems(tmp_path, {"api": API}, config_layout="consul")[0]
    ok = {"api": API, "admin": with_(API, register={"service": "api", "port": 9000 + 1024})}
    assert load(write(tmp_path, ok)).role("admin").register.port == 10024
    # one child per member: a fixed port is fine
    one = {"api": with_(API, shards=4, children="per-member", register={"service": "api", "port": 80})}
    assert load(write(tmp_path, one)).role("api").register.port == 80


def test_peers_of_an_unregistered_service_is_a_warning(tmp_path):
    path = write(tmp_path, {"gateway": GATEWAY})
    assert load(path).warnings == ((
        f"{path}: roles.gateway.peers.api: warning: no role registers service 'api' "
        "(the file stays empty unless another fleet does)"),)
    done = subprocess.run([sys.executable, "-m", "etcdvisor.cli", "validate", str(path)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0
    assert done.stderr.strip().splitlines() == [load(path).warnings[0]]


def test_validate_exits_2_with_one_line(tmp_path):
    path = write(tmp_path, {"api": with_(API, config={"X": {"item": "x", "on_change": "later"}})})
    done = subprocess.run([sys.executable, "-m", "etcdvisor.cli", "validate", str(path)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert "Traceback" not in done.stderr


def test_ergo_items_cannot_contain_a_slash(tmp_path):
    role = with_(API, config={"X": {"item": "a/b"}})
    (error,) = problems(tmp_path, {"api": role}, config_layout="ergo")
    assert "roles.api.config.X.item: 'a/b': items of config_layout ergo cannot contain '/'" in error
    assert load(write(tmp_path, {"api": role})).role("api").config["X"].item == "a/b"  # fine in etcdvisor


def test_yaml_dates_as_defaults_become_text(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("cluster: c\netcd: {endpoints: 'memory://x'}\nroles:\n  api:\n    type: singleton\n"
                    "    command: ['true']\n    config:\n      SINCE: {item: since, default: 2024-01-02}\n")
    assert load(path).role("api").config["SINCE"].default == "2024-01-02"


def test_a_non_finite_number_in_a_default_or_in_meta_is_refused(tmp_path):
    """.nan and .inf cannot be written as JSON (the child's config file, the registry
    record): validate refuses them where they would be written, one line each."""
    roles = {"api": with_(API, config={"W": {"item": "w", "default": [1, {"x": float("nan")}]}},
                          register={"service": "api", "port": "8000 + {index}",
                                    "meta": {"weight": float("inf"), "ok": 1.5}})}
    errors = problems(tmp_path, roles)
    assert [e.split(": ")[1] for e in errors] == ["roles.api.config.W.default", "roles.api.register.meta.weight"]
    assert all("holds .nan or .inf" in e for e in errors)
