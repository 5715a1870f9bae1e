"""Property: what ``validate`` accepts, ``run`` and reload accept identically.

Hypothesis generates duration, size, signal and schedule values, valid and
near-valid (spaces inside, sub-millisecond fractions, huge values, other
scripts' digits, unknown units...), writes each into a config file and checks
that the loader ``validate`` uses (YAML -> JSON Schema -> semantic checks) and
the parser the runtime uses agree: both accept with the same value, or both
refuse. The config crosses to ``run``/reload as a pickle (config/isolated.py),
so the loaded config must also survive that trip unchanged and its schedule
must answer the calls the cron runner makes.
"""

from __future__ import annotations

import math
import pickle
from datetime import UTC, datetime

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
from etcdvisor.config.roles import MAX_PAYLOAD_LIMIT

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
