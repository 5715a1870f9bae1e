"""Property: what ``validate`` accepts, ``run`` and reload accept identically.

Hypothesis generates duration, size, signal and schedule values, valid and
near-valid (spaces inside, sub-millisecond fractions, huge values, other
scripts' digits, unknown units...), writes each into a config file and checks
that the loader ``validate`` uses (YAML -> JSON Schema -> semantic checks) and
the parser the runtime uses agree: both accept with the same value, or both
refuse. The config crosses to ``run``/reload as a pickle (config/isolated.py),
so the loaded config must also survive that trip unchanged and its schedule
must answer the calls the cron runner makes.

Every numeric key (the list is read from the schema: a new key without a generator
fails the suite) has one type: a config with a value drawn for each of them, in range
or a near miss, is either refused on that key alone, or loads each value with its type
and ``run`` (memory backend; the fork of a child simulated, everything else real)
brings every role to RUNNING.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import json
import math
import os
import pickle
import re
import signal
import socket
import threading
import time
import uuid
from datetime import UTC, datetime
from unittest import mock

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from etcdvisor import timing
from etcdvisor.config import (
    ConfigError,
    Schedule,
    ScheduleError,
    isolated,  # noqa: F401 - registers how the config travels to run / reload
    load,
    parse_duration,
    parse_signal,
    parse_size,
)
from etcdvisor.config.model import RoleType
from etcdvisor.config.roles import MAX_CHILDREN, MAX_PAYLOAD_LIMIT, MAX_SHARDS
from etcdvisor.config.schema import schema_text
from etcdvisor.process import slot as slot_module
from etcdvisor.process.child import ChildProcess, ChildState
from etcdvisor.process.manager import ProcessManager
from etcdvisor.recipes.topic import Topic
from etcdvisor.runtime import build as build_module
from etcdvisor.runtime import supervisor as supervisor_module

PROPERTY = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
NOW = datetime(2026, 11, 29, 12, 0, 0, tzinfo=UTC)

digits = st.one_of(st.text(alphabet="0123456789", min_size=1, max_size=5),
                   st.sampled_from(["0", "00", "9" * 25, "\u0663", "1\u0660"]))
number = st.builds(lambda whole, frac: whole + (f".{frac}" if frac is not None else ""),
                   digits, st.none() | digits | st.just("0005"))
separator = st.sampled_from(["", "", "", " ", "\t"])
duration_unit = st.sampled_from(["ms", "s", "m", "h", "", "S", "d", "us", "min", "sec", "H"])
duration_part = st.builds(lambda n, sep, unit: n + sep + unit, number, separator, duration_unit)
duration_text = st.builds(lambda lead, parts, sep, trail: lead + sep.join(parts) + trail,
                          st.sampled_from(["", " ", "-", "+"]), st.lists(duration_part, min_size=1, max_size=3),
                          separator, st.sampled_from(["", " ", "\n"]))
duration_value = st.one_of(
    duration_text, duration_text, st.integers(-5, 10**9), st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["30 s", "1h 30m", "1.0005s", "9000h", "8784h", "8784h1ms", "0.5ms", "1e3s", True, None]),
)

size_unit = st.sampled_from(["", "B", "b", "kB", "KB", "k", "KiB", "kib", "MB", "MiB", "GB", "GiB", "TiB", "KiBs"])
size_value = st.one_of(
    st.builds(lambda lead, n, sep, unit: lead + n + sep + unit, st.sampled_from(["", " ", "-"]), number,
              separator, size_unit),
    st.integers(-5, 2 * 1024 * 1024), st.floats(allow_nan=False, allow_infinity=False, min_value=-1, max_value=1e7),
)

signal_value = st.one_of(
    st.builds(lambda lead, prefix, name, trail: lead + prefix + name + trail, st.sampled_from(["", " "]),
              st.sampled_from(["", "SIG", "sig", "Sig", "\u017fig"]),
              st.sampled_from(["TERM", "term", "Int", "HUP", "QUIT", "KILL", "USR1", "usr2", "STOP", "CHLD", "15",
                               ""]),
              st.sampled_from(["", " ", "\t"])),
    st.integers(0, 64), st.none(),
)

cron_field = st.sampled_from(["*", "*/5", "0", "59", "60", "1-5", "MON", "mon-fri", "L", "1#2", "x", "\u0663", ",",
                             "*/0"])
schedule_value = st.one_of(
    st.builds(lambda sep, d: "@every" + sep + d, st.sampled_from([" ", "  ", "\t", ""]), duration_text),
    st.builds(" ".join, st.lists(cron_field, min_size=4, max_size=6)),
    st.sampled_from(["@daily", "@HOURLY", "@reboot", "@every", "@weekly ", "", "* * 30 2 *", "0 0 29 2 *"]),
)
zone = st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Mars/Olympus", "../etc/passwd"])


def _load_role(tmp_path, role: dict, **top) -> object:
    """The loaded RoleSpec of ``role`` (named ``r``), or the ConfigError lines."""
    doc = {"cluster": "prop", "etcd": {"endpoints": "memory://prop"}, "member": {"id": "m", "ttl": 10},
           "roles": {"r": {"command": ["worker"], **role}}, **top}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    try:
        config = load(str(path), environ={})
    except ConfigError as exc:
        assert all("\n" not in line for line in exc.errors)
        return exc
    assert pickle.loads(pickle.dumps(config)) == config  # the trip to run / reload (config/isolated.py)
    return config.role("r")


def _outcome(parse, *args):
    try:
        return parse(*args)
    except ValueError as exc:
        assert "\n" not in str(exc)
        return ValueError


@PROPERTY
@given(value=duration_value)
def test_durations_agree(tmp_path, value):
    expected = _outcome(parse_duration, value)
    spec = _load_role(tmp_path, {"type": "sharded", "settle": value})
    if expected is ValueError:
        assert isinstance(spec, ConfigError), f"validate accepted {value!r}, the parser refuses it"
        assert "roles.r.settle" in str(spec)
    else:
        assert not isinstance(spec, ConfigError), f"the parser accepts {value!r}, validate refused: {spec}"
        assert spec.settle == expected and math.isfinite(expected)
        assert expected * 1000 == round(expected * 1000)  # whole milliseconds


@PROPERTY
@given(value=size_value)
def test_sizes_agree(tmp_path, value):
    expected = _outcome(parse_size, value)
    spec = _load_role(tmp_path, {"type": "topic", "max_payload": value})
    if expected is ValueError or not 1 <= expected <= MAX_PAYLOAD_LIMIT:
        assert isinstance(spec, ConfigError), f"validate accepted max_payload {value!r}"
    else:
        assert not isinstance(spec, ConfigError), f"the parser accepts {value!r}, validate refused: {spec}"
        assert spec.max_payload == expected


@PROPERTY
@given(value=signal_value)
def test_signals_agree(tmp_path, value):
    expected = _outcome(parse_signal, value)
    spec = _load_role(tmp_path, {"type": "sharded", "stop_signal": value})
    if expected is ValueError:
        assert isinstance(spec, ConfigError), f"validate accepted stop_signal {value!r}"
    else:
        assert not isinstance(spec, ConfigError), f"the parser accepts {value!r}, validate refused: {spec}"
        assert spec.stop_signal is expected


@PROPERTY
@given(value=schedule_value, tz=zone)
def test_schedules_agree(tmp_path, value, tz):
    try:
        expected = Schedule.parse(value, tz)
    except ScheduleError as exc:
        assert "\n" not in str(exc)
        expected = None
    spec = _load_role(tmp_path, {"type": "cron", "schedule": value, "timezone": tz})
    if expected is None:
        assert isinstance(spec, ConfigError), f"validate accepted schedule {value!r} in {tz}"
        return
    assert not isinstance(spec, ConfigError), f"Schedule.parse accepts {value!r} in {tz}, validate refused: {spec}"
    assert spec.schedule == expected and spec.timezone == tz
    # what the cron runner does with the schedule it gets from the config
    tick = spec.schedule.next_tick(NOW)
    assert tick > NOW
    assert spec.schedule.latest_tick(tick) == tick
    spec.schedule.tick_id(tick)
    spec.schedule.format_tick(tick)


# --- every numeric key: one type, one coercion, and what validates runs ----------------------------
#
# The keys come from the schema itself (numeric_keys): a key added to the schema without a
# generator below fails test_every_numeric_key_has_a_generator, so it cannot be forgotten.

SCHEMA_DOC = json.loads(schema_text())
_NOT_A_KEY = "#/$defs/notForThisType"


def numeric_keys(schema: dict = SCHEMA_DOC) -> dict[str, str]:
    """Dotted key (``roles.*.backoff.max``) -> ``integer`` | ``number`` | ``duration`` |
    ``size`` for every key of ``schema`` that takes a number, including nested ones and
    the ones a role type's ``then`` branch gives a numeric type (topic ``concurrency``)."""
    defs, found = schema["$defs"], {}

    def kind_of(node: dict) -> str | None:
        ref = node.get("$ref", "")
        if ref in ("#/$defs/duration", "#/$defs/size"):
            return ref.rsplit("/", 1)[1]
        types = node.get("type")
        types = types if isinstance(types, list) else [types]
        return "integer" if "integer" in types else "number" if "number" in types else None

    def visit(node: dict, path: tuple[str, ...]) -> None:
        ref = node.get("$ref", "")
        if ref.startswith("#/$defs/") and kind_of(node) is None and ref != _NOT_A_KEY:
            node = {**defs[ref.removeprefix("#/$defs/")], **node}
        for name, sub in node.get("properties", {}).items():
            if sub.get("$ref") == _NOT_A_KEY:
                continue
            kind = kind_of(sub)
            if kind is not None:
                found[".".join(path + (name,))] = kind
            else:
                visit(sub, path + (name,))
        for branch in node.get("allOf", ()):
            for part in ("then", "else"):
                if part in branch:
                    visit(branch[part], path)
        extra = node.get("additionalProperties")
        if isinstance(extra, dict) and ("properties" in extra or "$ref" in extra):
            visit(extra, path + ("*",))

    visit(schema, ())
    return found


NUMERIC_KEYS = numeric_keys()
INTEGER_KEYS = sorted(key for key, kind in NUMERIC_KEYS.items() if kind == "integer")

ROLE_OF_KEY = {
    # the role of RUN_ROLES (below) that a role key is tried on
    "settle": "j", "processes": "j", "shards": "f", "starting_deadline": "c",
    "concurrency": "t", "max_payload": "t", "max_attempts": "t",
    # probes answer from PROBE_TARGET on the job role (no step-down for readiness there);
    # step_down_after on the singleton (longer than its default min_ready of 2s: below)
    "health": "b", "step_down_after": "s", "rollout": "j", "min_ready": "j",
}


class _Listener:
    """A TCP port that accepts every connection: what the properties' probes check."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True, name="probe-target").start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.close()


_PROBE_TARGET: list[_Listener] = []


def probe_target() -> str:
    if not _PROBE_TARGET:
        _PROBE_TARGET.append(_Listener())
    return f"127.0.0.1:{_PROBE_TARGET[0].port}"
RUN_ROLES = {  # one role of each kind; every child is `sleep`
    "j": {"type": "sharded"},                           # join order (processes)
    "f": {"type": "sharded", "shards": 2},              # fixed shards
    "s": {"type": "singleton"},
    "c": {"type": "cron", "schedule": "@every 1s"},
    "b": {"type": "job"},
    "t": {"type": "topic"},
}


def _put(doc: dict, dotted: str, value, role: str) -> None:
    """Write ``value`` at ``dotted`` (``*`` = ``role``) into ``doc``."""
    parts = [role if part == "*" else part for part in dotted.split(".")]
    node = doc
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    if parts[-2:] == ["register", "port"]:
        node.setdefault("service", "num")  # register needs both
    if len(parts) >= 3 and parts[-3] == "health" and parts[-2] in ("startup", "readiness", "liveness"):
        node.setdefault("tcp", probe_target())  # a probe needs a target: one that always answers
    if parts[-2:] == ["health", "watchdog"]:
        node.setdefault("notify", True)  # watchdog needs notify


def _get(obj, dotted: str, role: str):
    """The loaded value of ``dotted`` in a Config (``*`` = ``role``)."""
    parts = dotted.split(".")
    if parts[0] == "roles":
        obj, parts = obj.role(role), parts[2:]
    for part in parts:
        obj = getattr(obj, part)
    return obj


def _base_doc(name: str, roles=RUN_ROLES) -> dict:
    return {"cluster": "num", "etcd": {"endpoints": f"memory://{name}"}, "member": {"id": "m1", "ttl": 10},
            "roles": {r: {"command": ["sleep", "600"], **copy.deepcopy(body)} for r, body in roles.items()}}


def _role_for(dotted: str) -> str:
    return ROLE_OF_KEY.get(dotted.split(".")[2], "s") if dotted.startswith("roles.") else "s"


def test_every_numeric_key_has_a_generator():
    """The run property below draws a value for each of these keys; a new numeric key in
    the schema needs a generator (and a place in RUN_ROLES) before the suite passes."""
    assert set(NUMERIC_KEYS) == set(ACCEPTED), "numeric keys of the schema != keys the property test covers"
    assert NUMERIC_KEYS["roles.*.concurrency"] == "integer"  # from the topic branch
    assert "number" not in NUMERIC_KEYS.values(), "a plain number key: say how it is parsed and tested"


@pytest.mark.parametrize("key", INTEGER_KEYS)
@pytest.mark.parametrize("value", [2.0, 1e3, -1.0, 0.5, math.inf, True])
def test_an_integer_key_refuses_anything_but_a_yaml_integer(tmp_path, key, value):
    """``processes: 2.0`` used to pass validate and fail the role with a TypeError at run
    time: every integer key takes a YAML integer and nothing else, one line naming the key."""
    doc = _base_doc("ints")
    _put(doc, key, value, _role_for(key))
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load(str(path), environ={})
    where = key.replace("*", _role_for(key))
    assert len(caught.value.errors) == 1 and f": {where}: " in caught.value.errors[0], caught.value.errors
    if isinstance(value, float) and value.is_integer():
        assert f"expected an integer{' or a string' if key.endswith(('port', 'max_unavailable')) else ''}, " \
               f"got {value!r} (an integer " \
               f"is written without a decimal point: {int(value)})" in caught.value.errors[0]


# values that validate must accept for each key: (strategy of (value as written, value loaded))
MAX_MS = 366 * 86_400_000


def durations(min_ms: int = 0, max_ms: int = MAX_MS):
    """A duration in every spelling the grammar has, paired with its value in seconds."""
    def spell(ms: int, how: int):
        if how == 0 and ms % 1000 == 0:
            return ms // 1000
        if how == 1:
            return ms / 1000
        if how == 2 and ms % 60_000 == 0:
            return f"{ms // 60_000}m"
        return f"{ms}ms"
    edges = st.sampled_from(sorted({min_ms, max_ms, max(min_ms, min(1000, max_ms))}))
    ms = st.one_of(edges, st.integers(min_ms, max(min_ms, min(max_ms, 3000))), st.integers(min_ms, max_ms))
    return st.builds(lambda n, how: (spell(n, how), n / 1000), ms, st.integers(0, 3))


def integers(low: int, high: int):
    edges = st.sampled_from([low, high])
    return st.one_of(edges, st.integers(low, high)).map(lambda n: (n, n))


def sizes(low: int, high: int):
    def spell(n: int, how: int):
        if how == 1:
            return f"{n}B"
        if how == 2 and n % 1024 == 0:
            return f"{n // 1024}KiB"
        return n
    return st.builds(lambda n, how: (spell(n, how), n), st.one_of(st.sampled_from([low, high]), st.integers(low, high)),
                     st.integers(0, 2))


def ports():
    fixed = integers(1, 65535)
    based = st.integers(1, 65535).map(lambda base: (f"{base} + {{index}}", base))  # the singleton's INDEX is 0
    return st.one_of(fixed, based)


HUGE = 2**70  # no upper bound in the schema: the runtime must take any integer
ACCEPTED = {
    "member.ttl": integers(2, 366 * 86_400),
    "etcd.timeout": durations(1),
    "roles.*.settle": durations(0),
    "roles.*.processes": integers(1, MAX_CHILDREN),
    "roles.*.shards": integers(1, MAX_CHILDREN),  # per-shard; per-member goes up to MAX_SHARDS (below)
    "roles.*.stop_timeout": durations(1),  # bounded below by the slack rule (below)
    "roles.*.backoff.initial": durations(1),
    "roles.*.backoff.max": durations(1),  # >= initial (below)
    "roles.*.start_retries": integers(0, HUGE),
    "roles.*.starting_deadline": durations(1),
    "roles.*.max_payload": sizes(1, MAX_PAYLOAD_LIMIT),
    "roles.*.max_attempts": integers(1, HUGE),
    "roles.*.register.port": ports(),
    "roles.*.concurrency": integers(1, MAX_CHILDREN),
    **{f"roles.*.health.{probe}.{key}": strategy for probe in ("startup", "readiness", "liveness")
       for key, strategy in (("period", durations(1)), ("timeout", durations(1)), ("initial_delay", durations(0)),
                             ("failure_threshold", integers(1, HUGE)), ("success_threshold", integers(1, HUGE)))},
    "roles.*.health.watchdog": durations(1),
    "roles.*.health.memory": sizes(1, 2**40),
    "roles.*.min_ready": durations(0),
    "roles.*.step_down_after": durations(2001),  # > the singleton's min_ready (2s), or validate refuses it
    "roles.*.rollout.max_unavailable": integers(1, HUGE),
    "roles.*.rollout.min_ready": durations(0),
    "roles.*.rollout.deadline": durations(1),
}


# near misses: what a typo or a wrong habit writes (integral floats, numeric strings,
# one past a bound, units where none belong...); validate may refuse them, and what it
# accepts must run like any value
_ODD_COMMON = [True, None, "", "2", math.inf, math.nan, -1, [1], {"a": 1}]
INTEGER_RANGES = {"member.ttl": (2, 366 * 86_400), "roles.*.processes": (1, MAX_CHILDREN),
                  "roles.*.shards": (1, MAX_SHARDS), "roles.*.start_retries": (0, HUGE),
                  "roles.*.max_attempts": (1, HUGE), "roles.*.concurrency": (1, MAX_CHILDREN),
                  "roles.*.register.port": (1, 65535), "roles.*.rollout.max_unavailable": (1, HUGE),
                  **{f"roles.*.health.{probe}.{key}": (1, HUGE) for probe in ("startup", "readiness", "liveness")
                     for key in ("failure_threshold", "success_threshold")}}


def near_misses(key: str):
    kind = NUMERIC_KEYS[key]
    if kind == "integer":
        low, high = INTEGER_RANGES[key]
        inside = st.integers(low, min(high, 5000))
        odd = st.one_of(inside.map(float), inside.map(lambda n: n + 0.5), inside.map(str),
                        st.sampled_from([low - 1, high + 1, low - 2**70, high * 2**70, 1e300]))
        if key.endswith(".port"):
            odd = st.one_of(odd, st.sampled_from(["0 + {index}", "65536 + {index}", "80 + {INDEX}", "80+1",
                                                  "65535 + {index}", "8080.0 + {index}"]))
        if key.endswith(".shards"):  # more than the children cap: per-member only
            odd = st.one_of(odd, st.integers(MAX_CHILDREN + 1, MAX_SHARDS))
    elif kind == "duration":
        odd = st.sampled_from([-1, -0.001, 0, 0.0005, "0.5ms", "1 s", "1e3s", "10S", "9000h", "8784h1ms",
                               MAX_MS / 1000 + 0.001, 10**30, "1h-1m", "1.0005s", "P1D"])
    else:
        odd = st.sampled_from([0, -1, 1024.0, "1.5B", "0.5KiB", "2MiB", MAX_PAYLOAD_LIMIT + 1, "64 KiB", "1e3"])
    return st.one_of(odd, st.sampled_from(_ODD_COMMON))


@st.composite
def run_configs(draw):
    """A value for every numeric key (as written, as it must load; None: not known), a
    ``children`` mode, and whether the lease-bound roles fit under the drawn
    ``member.ttl`` (ttl 2 and 3 leave no slack for any stop_timeout: then only the topic
    role runs). Most examples put one key at a near miss."""
    values = {key: draw(strategy) for key, strategy in ACCEPTED.items()}
    bound = timing.max_stop_timeout(values["member.ttl"][1])
    lease_roles = bound > 0.001
    if lease_roles:  # the slack rule: stop_timeout < max_stop_timeout(ttl)
        values["roles.*.stop_timeout"] = draw(durations(1, min(MAX_MS, math.ceil(bound * 1000) - 1)))
    values["roles.*.backoff.max"] = draw(durations(round(values["roles.*.backoff.initial"][1] * 1000)))
    children = draw(st.sampled_from(["per-shard", "per-member"]))
    if children == "per-member":
        values["roles.*.shards"] = draw(integers(1, MAX_SHARDS))
    odd = draw(st.none() | st.sampled_from(sorted(NUMERIC_KEYS)))
    if odd is not None and not (odd.startswith("roles.") and not lease_roles and _role_for(odd) != "t"):
        values[odd] = (draw(near_misses(odd)), None)
    return values, children, lease_roles


def _edges(high: bool, **written) -> tuple:
    """Every key at the bottom (or top) of its accepted range, ``written`` overriding role keys."""
    seconds = MAX_MS // 1000 if high else None
    pick = {
        "member.ttl": 366 * 86_400 if high else 4, "etcd.timeout": seconds or 0.001,
        "roles.*.settle": seconds or 0, "roles.*.processes": MAX_CHILDREN if high else 1,
        "roles.*.shards": MAX_CHILDREN if high else 1, "roles.*.stop_timeout": 86_400 if high else 0.001,
        "roles.*.backoff.initial": seconds or 0.001, "roles.*.backoff.max": seconds or 0.001,
        "roles.*.start_retries": HUGE if high else 0, "roles.*.starting_deadline": seconds or 0.001,
        "roles.*.max_payload": "1MiB" if high else 1, "roles.*.max_attempts": HUGE if high else 1,
        "roles.*.register.port": 65535 if high else "1 + {index}", "roles.*.concurrency": MAX_CHILDREN if high else 1,
    } | {"roles.*." + key: value for key, value in written.items()}
    loaded = {key: (parse_duration(v) if NUMERIC_KEYS[key] == "duration" else parse_size(v)
                    if NUMERIC_KEYS[key] == "size" else v if isinstance(v, int) else 1) for key, v in pick.items()}
    return {key: (pick[key], loaded[key]) for key in pick}, "per-shard", True


def _expected_children(config) -> dict[str, int | None]:
    """Children each role must reach RUNNING with on this one member (which holds every
    shard); None: the role only must not fail (its first child waits for a long
    ``settle``, or a short ``starting_deadline`` may skip every tick on a loaded machine)."""
    expected: dict[str, int | None] = {name: 1 for name in config.roles}
    for name, spec in config.roles.items():
        if spec.type is RoleType.SHARDED:
            count = spec.processes if spec.shards is None else spec.shards if spec.children == "per-shard" else 1
            expected[name] = count if spec.settle <= 2 else None
        elif spec.type is RoleType.CRON and spec.starting_deadline is not None and spec.starting_deadline < 2:
            expected[name] = None
        if spec.health.watchdog is not None:  # a simulated child never sends WATCHDOG=1: it is restarted
            expected[name] = None
    return expected


_FAKE_PIDS = itertools.count(90_000_000)  # above any pid_max: never a real process


class SimulatedChild(ChildProcess):
    """The real ChildProcess minus the fork: no process, no signal sent. The slot, the
    manager, backoff, lease deadlines and everything above them are the real ones; a
    stop or kill ends the child at the next poll."""

    _ended_by: int | None = None

    def start(self, now: float | None = None) -> int:
        self.pid = self.pgid = next(_FAKE_PIDS)
        self.started_at = time.monotonic() if now is None else now
        self.state = ChildState.RUNNING
        return self.pid

    def _signal_group(self, signum: int) -> None:
        if signum in (self.spec.stop_signal, signal.SIGKILL):
            self._ended_by = signum

    def _outside_group(self) -> set[int]:
        return set()

    def kill(self) -> None:
        if self.state in (ChildState.RUNNING, ChildState.STOPPING, ChildState.KILLED):
            self.stop_requested, self._ended_by, self.state = True, signal.SIGKILL, ChildState.KILLED

    def poll(self, now: float) -> int | None:
        if self.state is ChildState.EXITED or self.pid is None:
            return self.returncode
        if self._ended_by is None:
            self._apply_deadlines(now)  # the real lease and stop deadlines
        if self._ended_by is None:
            return None
        self.returncode, self.exited_at, self.state = -self._ended_by, now, ChildState.EXITED
        return self.returncode


@contextlib.contextmanager
def simulated_fork():
    """``run``'s supervisor with real slots and children whose fork is simulated (a role
    may ask for 1,024 children: real ones would cost seconds each example)."""
    def manager(**_ignored):
        return ProcessManager(use_watchdog=False, capture_output=False, cgroups=False, reap_orphans=False)

    with mock.patch.object(slot_module, "ChildProcess", SimulatedChild), \
            mock.patch.object(build_module, "ProcessManager", manager):
        yield


def run_until_running(config, expected: dict[str, int | None], budget: float = 60.0) -> None:
    """Start the member as ``run`` does (memory backend), publish one message per topic,
    turn the loop until every role has its ``expected`` children RUNNING; no role may fail."""
    sup = supervisor_module.Supervisor(config, environ={"PATH": os.environ.get("PATH", os.defpath)})
    sup.start()
    loop = sup.joined
    try:
        for spec in config.roles.values():
            if spec.type is RoleType.TOPIC:
                Topic(sup.backend, sup.keys.topic(spec.topic)).publish(b"x")
        give_up = time.monotonic() + budget
        while True:
            loop._turn()
            status = loop.last_status
            failed = {name: entry.get("failed") for name, entry in status.items() if entry.get("failed")
                      and config.roles[name].health.watchdog is None}  # (a silent child fails its watchdog)
            assert not failed, f"validate accepted the config, run failed: {failed}"
            running = {name: sum(child["state"] == "running" for child in entry.get("children", {}).values())
                       for name, entry in status.items()}
            if all(running.get(name) == count for name, count in expected.items() if count is not None):
                return
            assert time.monotonic() < give_up, f"not RUNNING after {budget}s: {running}, expected {expected}"
    finally:
        loop.stopping = True
        sup.shutdown()


RUN_PROPERTY = settings(max_examples=25, deadline=None, database=None,
                        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.mark.slow  # seconds of real time: left out of the fast part (-m "not slow")
@RUN_PROPERTY
@example(case=_edges(high=False))
@example(case=_edges(high=True, settle=0))  # 1,024 children of processes, of per-shard, ...
@example(case=_edges(high=True))  # ... and every duration at 366 days
@given(case=run_configs())
def test_every_numeric_value_validate_accepts_runs(tmp_path, case):
    """What validates is what runs, for every numeric key: a config with each numeric key
    drawn from what validate accepts loads each value with its one type (int for integer
    keys and sizes, float seconds for durations), and ``run`` (memory backend) brings
    every role to RUNNING with the children it promises, the 1,024 cap included."""
    values, children, lease_roles = case
    roles = RUN_ROLES if lease_roles else {"t": RUN_ROLES["t"]}
    doc = _base_doc(f"num-{uuid.uuid4().hex[:12]}", roles)
    if lease_roles:
        doc["roles"]["f"]["children"] = children
    port_role = "s" if lease_roles else "t"
    for key, (written, _) in values.items():
        if not key.startswith("roles."):
            _put(doc, key, written, "")
            continue
        if key == "roles.*.register.port":
            _put(doc, key, written, port_role)
            continue
        name = key.split(".")[2]
        targets = ["j", "f"] if name == "settle" else [ROLE_OF_KEY[name]] if name in ROLE_OF_KEY else list(roles)
        for role in targets:
            if role in roles:
                _put(doc, key, written, role)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    odd = [key for key, (_, expected) in values.items() if expected is None]
    try:
        config = load(str(path), environ={})
    except ConfigError as exc:  # only a near miss may be refused, and only on its own key
        assert odd, f"validate refused values in their accepted ranges: {exc.errors}"
        where = re.escape(odd[0]).replace(r"\*", "[a-z]")
        assert all(re.search(f": {where}: ", line) for line in exc.errors), (odd, exc.errors)
        return
    for key, (written, expected) in values.items():
        role = port_role if key.endswith(".port") else _role_for(key)
        if key.startswith("roles.") and role not in roles:
            continue
        if key == "roles.*.register.port":
            registration = config.role(role).register
            got = registration.port if registration.port is not None else registration.port_base
        else:
            got = _get(config, key, role)
        wanted = float if NUMERIC_KEYS[key] == "duration" else int
        assert type(got) is wanted, f"{key}: {written!r} loaded as {type(got).__name__}, not {wanted.__name__}"
        if expected is not None:
            assert got == expected, (key, written, got)
        elif NUMERIC_KEYS[key] == "integer" and not key.endswith((".port", ".max_unavailable")):
            # (a port may be "BASE + {index}"; max_unavailable "2" or "25%": strings by design)
            assert got == written and type(written) is int, f"{key}: {written!r} accepted as {got!r}"
    assert pickle.loads(pickle.dumps(config)) == config  # the trip to run / reload
    with simulated_fork():
        run_until_running(config, _expected_children(config))
