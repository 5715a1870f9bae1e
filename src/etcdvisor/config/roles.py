"""Semantic checks and defaults for one role (the document is schema-valid here).

Each ``build_role`` call adds its problems to the shared collector and returns
a :class:`RoleSpec`, or None if the role had problems. Checks that need the
other roles (``after`` references and cycles) live in :mod:`.semantic`.
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Mapping
from typing import Any, TypedDict, overload

from .. import timing
from .durations import format_duration, format_size, parse_duration, parse_size
from .errors import Document, KeyPath, Problems
from .health import health_fields
from .model import (
    BackoffSettings,
    RestartPolicy,
    RoleSpec,
    RoleType,
    RolloutSettings,
    _frozen_map,
    is_reserved_env,
)
from .output import output_fields
from .role_fields import RoleFields
from .schedule import Schedule, ScheduleError, load_timezone
from .signals import parse_signal
from .wiring import wiring_fields

ROLE_NAME = re.compile(r"[a-z][a-z0-9_-]*")
ROLE_NAME_MAX = 63
WAIT_GROUP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


MAX_PAYLOAD_LIMIT = 1024 * 1024  # etcd's default request limit is 1.5MiB; keep room for keys


class _Defaults(TypedDict):
    settle: float
    handoff: str
    processes: int
    children: str
    stop_timeout: float
    start_retries: int
    backoff_initial: float
    backoff_max: float
    timezone: str
    cron_concurrency: str
    topic_concurrency: int
    delivery: str
    max_payload: int
    max_attempts: int


DEFAULTS: _Defaults = {
    "settle": 1.0, "handoff": "fenced", "processes": 1, "children": "per-shard",
    "stop_timeout": 5.0, "start_retries": 5, "backoff_initial": 1.0, "backoff_max": 60.0,
    "timezone": "UTC", "cron_concurrency": "forbid", "topic_concurrency": 1, "delivery": "queue",
    "max_payload": 64 * 1024, "max_attempts": 5,
}
_NEVER_ALWAYS = {RoleType.CRON, RoleType.JOB, RoleType.TOPIC}


class _RoleChecker:
    """Reads one role's keys, converting values and recording problems."""

    def __init__(self, name: str, raw: Document, problems: Problems):
        self.name, self.raw, self.problems = name, raw, problems
        self.path: tuple[str, ...] = ("roles", name)
        self.errors_before = len(problems)

    def fail(self, key: str | KeyPath, reason: str) -> None:
        keys = key if isinstance(key, tuple) else (key,)
        self.problems.add(self.path + keys, reason)

    @overload
    def duration(self, key: str, default: float, *, positive: bool = True) -> float: ...
    @overload
    def duration(self, key: str, default: None, *, positive: bool = True) -> float | None: ...

    def duration(self, key: str, default: float | None, *, positive: bool = True) -> float | None:
        """The key's value in seconds, or ``default`` when it is absent or invalid
        (invalid: a problem is recorded)."""
        if key not in self.raw:
            return default
        try:
            seconds = parse_duration(self.raw[key])
        except ValueError as exc:
            self.fail(key, str(exc))
            return default
        if positive and seconds <= 0:
            self.fail(key, "must be greater than zero")
        return seconds

    @property
    def ok(self) -> bool:
        return len(self.problems) == self.errors_before


def build_role(name: Any, raw: Document, *, ttl: int | None, base_dir: str, problems: Problems) -> RoleSpec | None:
    """Return the role with defaults filled in, or None if it has problems.

    ``ttl`` is the member lease TTL for the slack check (None: member settings
    were invalid, skip the check). ``name`` is a key of the file's ``roles`` mapping
    (a YAML key: checked here to be a valid role name)."""
    check = _RoleChecker(name, raw, problems)
    if not isinstance(name, str) or not ROLE_NAME.fullmatch(name) or len(name) > ROLE_NAME_MAX:
        problems.add(("roles", name), f"{name!r} is not a valid role name (lowercase letters, digits, "
                     f"'_' and '-', starting with a letter, at most {ROLE_NAME_MAX} characters)")
        return None
    role_type = RoleType(raw["type"])
    command = tuple(raw["command"])
    if not command[0].strip():
        check.fail(("command", 0), "program name is empty")
    for index, arg in enumerate(command):
        if "\0" in arg:
            check.fail(("command", index), "contains a NUL byte")
    stop_timeout = check.duration("stop_timeout", DEFAULTS["stop_timeout"])
    fields: RoleFields = dict(
        name=name, type=role_type, command=command,
        env=_environment(check), cwd=_cwd(raw, base_dir),
        restart=_restart(check, role_type), stop_signal=_stop_signal(check),
        stop_timeout=stop_timeout, backoff=_backoff(check),
        start_retries=raw.get("start_retries", DEFAULTS["start_retries"]),
        after=tuple(raw.get("after", ())), wait_for=_wait_groups(check),
    )
    fields.update(_type_fields(check, role_type))
    if "rollout" in raw:
        fields["rollout"] = _rollout(check)
    fields.update(wiring_fields(check.raw, check.path, problems, fields["cwd"] or base_dir))
    fields.update(output_fields(check.raw, check.path, problems, fields["cwd"] or base_dir))
    fields.update(health_fields(check.raw, check.path, role_type.value, problems))
    if role_type.lease_bound and ttl is not None and stop_timeout is not None:
        problem = timing.slack_problem(ttl, stop_timeout)
        if problem:
            check.fail("stop_timeout", problem if "stop_timeout" in raw else f"the default {problem}")
    return RoleSpec(**fields) if check.ok else None


def _environment(check: _RoleChecker) -> Mapping[str, str]:
    env: dict[str, str] = {}
    for key, value in check.raw.get("env", {}).items():
        if not isinstance(key, str) or not ENV_NAME.fullmatch(key):
            check.fail(("env", key), f"{key!r} is not a valid environment variable name")
        elif is_reserved_env(key):
            check.fail(("env", key), f"{key} is set by the supervisor and cannot be overridden")
        elif isinstance(value, str) and "\0" in value:
            check.fail(("env", key), "contains a NUL byte")
        else:
            # YAML gives bools and numbers; children only see strings
            env[key] = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return _frozen_map(env)


def _cwd(raw: Document, base_dir: str) -> str | None:
    cwd = raw.get("cwd")
    return os.path.normpath(os.path.join(base_dir, os.path.expanduser(cwd))) if cwd else None


def _restart(check: _RoleChecker, role_type: RoleType) -> RestartPolicy:
    default = RestartPolicy.ON_FAILURE if role_type in _NEVER_ALWAYS else RestartPolicy.ALWAYS
    policy = RestartPolicy(check.raw.get("restart", default))
    if policy is RestartPolicy.ALWAYS and role_type in _NEVER_ALWAYS:
        what = {RoleType.JOB: "a job that always restarts never completes",
                RoleType.CRON: "a cron run that always restarts never finishes its tick",
                RoleType.TOPIC: "a message whose run always restarts is never done"}[role_type]
        check.fail("restart", f"'always' is not allowed for {role_type} roles ({what}; use on-failure or never)")
    return policy


def _stop_signal(check: _RoleChecker) -> signal.Signals:
    try:
        return parse_signal(check.raw.get("stop_signal", "TERM"), "stop signal")
    except ValueError as exc:
        check.fail("stop_signal", str(exc))
        return signal.SIGTERM


def _backoff(check: _RoleChecker) -> BackoffSettings:
    raw = check.raw.get("backoff", {})
    sub = _RoleChecker(check.name, raw, check.problems)
    sub.path = check.path + ("backoff",)
    initial = sub.duration("initial", DEFAULTS["backoff_initial"])
    maximum = sub.duration("max", max(DEFAULTS["backoff_max"], initial or 0))
    if initial is not None and maximum is not None and maximum < initial:
        sub.fail("max", f"must be >= backoff.initial ({format_duration(initial)}), got {format_duration(maximum)}")
    return BackoffSettings(initial=initial, max=maximum)


def _rollout(check: _RoleChecker) -> RolloutSettings:
    """``rollout: {max_unavailable, min_ready, deadline}`` (schema-valid here)."""
    sub = _RoleChecker(check.name, check.raw.get("rollout") or {}, check.problems)
    sub.path = check.path + ("rollout",)
    amount, percent = 25.0, True
    raw = sub.raw.get("max_unavailable")
    if isinstance(raw, str) and raw.endswith("%"):
        amount = float(raw[:-1])
        if not 0 < amount <= 100:
            sub.fail("max_unavailable", f"must be a percentage above 0% and at most 100%, got {raw!r}")
    elif isinstance(raw, (int, str)):  # a count ("2" as well: the schema allows only digits)
        count, percent = float(raw), False
        if count < 1 or count != int(count):
            sub.fail("max_unavailable", f"must be a whole number of children >= 1, got {raw!r}")
        amount = int(raw) if isinstance(raw, int) else int(count) if count == int(count) else count
    min_ready = sub.duration("min_ready", None, positive=False)
    deadline = sub.duration("deadline", 600.0)
    return RolloutSettings(max_unavailable=amount, percent=percent, min_ready=min_ready,
                           deadline=deadline if deadline is not None else 600.0)


def _wait_groups(check: _RoleChecker) -> tuple[str, ...]:
    names = tuple(check.raw.get("wait_for", ()))
    for index, group in enumerate(names):
        if not WAIT_GROUP_NAME.fullmatch(group):
            check.fail(("wait_for", index), f"{group!r} is not a valid wait group name "
                       "(letters, digits, '_', '.', '-', starting with a letter or digit)")
    return names


def _type_fields(check: _RoleChecker, role_type: RoleType) -> RoleFields:
    raw = check.raw
    if role_type is RoleType.SHARDED:
        return _sharded_fields(check)
    if role_type is RoleType.SINGLETON:
        return {"standby": raw.get("standby", False)}
    if role_type is RoleType.CRON:
        return _cron_fields(check)
    if role_type is RoleType.TOPIC:
        return _topic_fields(check)
    return {}


MAX_SHARDS = 4096
MAX_CHILDREN = 1024
"""The cap on one role's children per member, whatever produces them (sharded
``processes``, ``shards`` with ``children: per-shard``, topic ``concurrency``): a typo
(10000) must not fork-bomb the host. Checked by ``validate``, one line."""
MAX_PROCESSES = MAX_CHILDREN


def _sharded_fields(check: _RoleChecker) -> RoleFields:
    """settle, handoff, and either join-order ``processes`` or fixed ``shards``
    (with ``children``); one problem line per conflicting or out-of-range key."""
    raw = check.raw
    shards = raw.get("shards")
    children = raw.get("children", DEFAULTS["children"]) if shards is not None else None
    if shards is not None and "processes" in raw:
        check.fail("processes", "cannot be combined with shards (processes is for join-order mode; "
                   "with shards, use children: per-shard or per-member)")
    if "children" in raw and shards is None:
        check.fail("children", "needs shards (children applies to fixed-shard mode only)")
    if shards is not None and shards < 1:
        check.fail("shards", f"must be at least 1, got {_count(shards)}")
    elif shards is not None and shards > MAX_SHARDS:
        check.fail("shards", f"{_count(shards)} is more than the limit of {MAX_SHARDS} shards")
    elif shards is not None and children == "per-shard" and shards > MAX_CHILDREN:
        # one member may hold every shard (the others left, or have not joined yet)
        check.fail("shards", f"{shards} shards with children: per-shard can run {shards} children on one "
                       f"member (a member may hold every shard), more than the limit of {MAX_CHILDREN} "
                       f"children per member (use children: per-member, or at most {MAX_CHILDREN} shards)")
    processes = raw.get("processes", DEFAULTS["processes"])
    if processes < 1:
        check.fail("processes", f"must be at least 1, got {_count(processes)}")
    elif processes > MAX_PROCESSES:
        check.fail("processes", f"{_count(processes)} is more than the limit of {MAX_CHILDREN} children "
                   f"per member")
    return {
        "settle": check.duration("settle", DEFAULTS["settle"], positive=False),
        "handoff": raw.get("handoff", DEFAULTS["handoff"]),
        "processes": None if shards is not None else processes,
        "shards": shards,
        "children": children,
    }


def _count(value: int) -> str:
    """An integer from the file, for a message (a 300-digit typo stays one short line)."""
    return str(value) if value.bit_length() <= 64 else "a huge number"


def _cron_fields(check: _RoleChecker) -> RoleFields:
    raw = check.raw
    tz = raw.get("timezone", DEFAULTS["timezone"])
    try:
        load_timezone(tz)
    except ScheduleError:
        check.fail("timezone", f"{tz!r} is not a known IANA time zone (e.g. UTC, Europe/Berlin)")
        tz_ok = False
    else:
        tz_ok = True
    schedule = None
    try:
        # the very object the cron runner uses: what validates is what runs
        schedule = Schedule.parse(raw["schedule"], tz if tz_ok else DEFAULTS["timezone"])
    except ScheduleError as exc:
        check.fail("schedule", str(exc))
    return {
        "schedule": schedule, "timezone": tz,
        "concurrency": raw.get("concurrency", DEFAULTS["cron_concurrency"]),
        "starting_deadline": check.duration("starting_deadline", None),
    }


def _topic_fields(check: _RoleChecker) -> RoleFields:
    raw = check.raw
    max_payload = DEFAULTS["max_payload"]
    if "max_payload" in raw:
        try:
            max_payload = parse_size(raw["max_payload"])
        except ValueError as exc:
            check.fail("max_payload", str(exc))
        if max_payload > MAX_PAYLOAD_LIMIT:
            check.fail("max_payload", f"{format_size(max_payload)} is more than the limit of "
                       f"{format_size(MAX_PAYLOAD_LIMIT)} (payloads are stored in etcd)")
        elif max_payload < 1:
            check.fail("max_payload", "must be at least 1 byte")
    concurrency = raw.get("concurrency", DEFAULTS["topic_concurrency"])
    if concurrency > MAX_CHILDREN:
        check.fail("concurrency", f"{_count(concurrency)} is more than the limit of {MAX_CHILDREN} children "
                   "per member (each message being handled is a child)")
    return {
        "topic": raw.get("topic", check.name), "delivery": raw.get("delivery", DEFAULTS["delivery"]),
        "concurrency": concurrency,
        "max_payload": max_payload, "max_attempts": raw.get("max_attempts", DEFAULTS["max_attempts"]),
    }
