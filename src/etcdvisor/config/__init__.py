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
"""

from .commands import find_command, unresolved_command
from .diff import diff
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

__all__ = [
    "ENV_OVERRIDES", "LEASE_BOUND_TYPES", "BackoffSettings", "Config", "ConfigDiff", "ConfigError", "EtcdKind",
    "EtcdSettings", "MemberSettings", "RestartPolicy", "RoleSpec", "RoleType", "Schedule", "ScheduleError",
    "diff", "find_command", "unresolved_command", "format_duration", "load", "parse_duration", "parse_duration_ms",
    "parse_signal", "parse_size", "schema_text",
]
