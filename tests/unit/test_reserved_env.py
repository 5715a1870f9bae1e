"""One list of the variables the supervisor sets for children (issue 18, item 3): a
role's ``env:`` and its ``config:`` items are refused the same names."""

from __future__ import annotations

import pytest
import yaml

from etcdvisor.config import ConfigError, load
from etcdvisor.config.model import RESERVED_ENV, RESERVED_ENV_PREFIX, is_reserved_env


def test_the_list_is_pinned():
    """Changing it changes what configs validate: docs/config-reference.md lists the same names."""
    assert RESERVED_ENV == {"ROLE", "MEMBER_ID", "CLUSTER", "INDEX", "COUNT", "EPOCH", "SHARDS", "LEADER",
                            "LEADER_TOKEN", "SCHEDULED_TIME", "TOPIC", "MESSAGE_ID"}
    assert RESERVED_ENV_PREFIX == "ETCDVISOR_"
    assert is_reserved_env("ETCDVISOR_ANYTHING") and not is_reserved_env("DB_PORT")


def write(tmp_path, role) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"cluster": "c", "etcd": {"endpoints": "memory://x"},
                                    "roles": {"worker": {"type": "sharded", "command": ["true"], **role}}}))
    return str(path)


@pytest.mark.parametrize("name", sorted(RESERVED_ENV) + ["ETCDVISOR_X"])
def test_env_and_config_items_refuse_every_reserved_name(tmp_path, name):
    with pytest.raises(ConfigError) as env_error:
        load(write(tmp_path, {"env": {name: "1"}}), {})
    assert env_error.value.errors == [f"{tmp_path}/c.yaml: roles.worker.env.{name}: {name} is set by the "
                                      f"supervisor and cannot be overridden"]
    with pytest.raises(ConfigError) as config_error:
        load(write(tmp_path, {"config": {name: {"item": "some.item"}}}), {})
    assert config_error.value.errors == [f"{tmp_path}/c.yaml: roles.worker.config.{name}: {name} is set by the "
                                         f"supervisor and cannot come from the config"]
