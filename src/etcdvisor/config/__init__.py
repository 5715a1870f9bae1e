"""The configuration layer: load a YAML file into frozen dataclasses, or explain why not.

>>> config = load("etcdvisor.yaml")            # raises ConfigError (one line) on any problem
>>> config.role("worker").stop_timeout         # float seconds
>>> diff(old_config, new_config).changed       # role names whose spec changed

One parser per concept, used by ``validate``, ``run``, reload and the CLI:
durations and sizes in :mod:`.durations`, stop signals in :mod:`.signals`,
cron schedules in :mod:`.schedule` (the parsed ``Schedule`` is carried in the
config and run as is).

Pipeline (docs/safety.md, rule 6): bounded read (:mod:`.source`: regular files
up to 1 MiB, YAML aliases and nesting bounded), ``yaml`` SafeLoader (duplicate keys rejected)
-> JSON Schema ``etcdvisor/schemas/config.schema.json`` (Draft 2020-12, closed
objects) -> semantic checks (durations, signals, names, ``after`` graph, cron
schedules, time zones, the lease slack rule of :mod:`etcdvisor.timing`) ->
:class:`Config`. Key reference: docs/config-reference.md.

Imports are lazy (as in :mod:`etcdvisor.recipes`): ``from etcdvisor.config import Config``
loads the model, not the YAML reader or the schema machinery, which only ``load``
needs (the supervisor gets its config from a check child: :mod:`.isolated`).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

# eager: the submodule ``diff`` would otherwise shadow the function once anything imports it
from .diff import diff

if TYPE_CHECKING:
    from .commands import find_command, unresolved_command
    from .durations import format_duration, parse_duration, parse_duration_ms, parse_size
    from .errors import ConfigError
    from .loader import ENV_OVERRIDES, load
    from .model import (
        LEASE_BOUND_TYPES,
        BackoffSettings,
        Config,
        ConfigDiff,
        EtcdKind,
        EtcdSettings,
        MemberSettings,
        RestartPolicy,
        RoleSpec,
        RoleType,
    )
    from .schedule import Schedule, ScheduleError
    from .schema import schema_text
    from .signals import parse_signal

_EXPORTS = {
    "find_command": "commands", "unresolved_command": "commands",
    "format_duration": "durations", "parse_duration": "durations", "parse_duration_ms": "durations",
    "parse_size": "durations", "ConfigError": "errors", "ENV_OVERRIDES": "loader", "load": "loader",
    "LEASE_BOUND_TYPES": "model", "BackoffSettings": "model", "Config": "model", "ConfigDiff": "model",
    "EtcdKind": "model", "EtcdSettings": "model", "MemberSettings": "model", "RestartPolicy": "model",
    "RoleSpec": "model", "RoleType": "model", "Schedule": "schedule", "ScheduleError": "schedule",
    "schema_text": "schema", "parse_signal": "signals",
}

__all__ = [
    "ENV_OVERRIDES", "LEASE_BOUND_TYPES", "BackoffSettings", "Config", "ConfigDiff", "ConfigError", "EtcdKind",
    "EtcdSettings", "MemberSettings", "RestartPolicy", "RoleSpec", "RoleType", "Schedule", "ScheduleError",
    "diff", "find_command", "unresolved_command", "format_duration", "load", "parse_duration", "parse_duration_ms",
    "parse_signal", "parse_size", "schema_text",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{module}", __name__), name)
