"""Durations, sizes, schedules, find_command and cycle detection."""

from __future__ import annotations

import os
import stat

import pytest

from etcdvisor.config import (
    Schedule,
    ScheduleError,
    find_command,
    format_duration,
    parse_duration,
    parse_signal,
    parse_size,
)
from etcdvisor.config.errors import ConfigError, format_key_path
from etcdvisor.config.semantic import find_cycle


@pytest.mark.parametrize("text, seconds", [
    (5, 5.0), (0.25, 0.25), (0, 0.0), ("10", 10.0), ("1.5", 1.5), ("500ms", 0.5), ("10s", 10.0),
    ("2m", 120.0), ("1h", 3600.0), ("1m30s", 90.0), ("1h2m3s", 3723.0), ("1.5h", 5400.0), (" 7s ", 7.0),
    (0.1, 0.1), ("0.001", 0.001), ("8784h", 366 * 86400.0),
])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", [
    "", "s", "5 secs", "1d", "-5s", "5s5", "ms", True, None, -1, [5], float("nan"), float("inf"),
    "30 s", "1h 30m", "1.0005s", "0.5ms", "9000h", "8784h1ms", "5S", "\u0663s", "1e3s", 10**30, 1e-9,
])
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError) as caught:
        parse_duration(text)
    assert "\n" not in str(caught.value)


def test_format_duration():
    assert [format_duration(v) for v in (10.0, 6.5, 0.25, 1 / 3)] == ["10s", "6.5s", "0.25s", "0.333s"]


@pytest.mark.parametrize("text, size", [
    (100, 100), ("500B", 500), ("10kB", 10_000), ("10KB", 10_000), ("64KiB", 65_536), ("64kib", 65_536),
    ("1MiB", 1_048_576), ("1MB", 1_000_000), ("1.5KiB", 1536), ("2048", 2048), ("1GiB", 1024**3),
])
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["lots", "1 KiBs", "1TiB", "-1", -1, True, 1.5, "KiB", "64 KiB", "0.5B", "1.0001KiB"])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError):
        parse_size(text)


@pytest.mark.parametrize("text, name", [
    ("TERM", "SIGTERM"), ("sigint", "SIGINT"), (" SIGUSR1 ", "SIGUSR1"), ("Kill", "SIGKILL"),
])
def test_parse_signal(text, name):
    assert parse_signal(text).name == name


@pytest.mark.parametrize("text", ["STOP", "15", 15, "", "SIG", "TERM2", "\u017figterm", None])
def test_parse_signal_rejects(text):
    with pytest.raises(ValueError, match="is not a known signal"):
        parse_signal(text)
    with pytest.raises(ValueError, match="is not a stop signal"):
        parse_signal(text, "stop signal")


@pytest.mark.parametrize("text, normalized, period", [
    ("*/5 * * * *", "*/5 * * * *", None),
    ("  0   3 * *   MON-FRI ", "0 3 * * MON-FRI", None),
    ("@hourly", "@hourly", None),
    ("@DAILY", "@DAILY", None),
    ("@every 30s", "@every 30s", 30.0),
    ("@every 1h30m", "@every 1h30m", 5400.0),
    ("@every 90", "@every 90", 90.0),
])
def test_parse_schedule(text, normalized, period):
    schedule = Schedule.parse(text)
    assert schedule.expression == normalized
    assert (schedule.period.total_seconds() if schedule.period else None) == period


@pytest.mark.parametrize("text, fragment", [
    ("61 * * * *", "Bad minute"),
    ("* * 30 2 *", "Bad day-of-month"),
    ("* * *", "has 3 fields"),
    ("0 0 0 * * *", "has 6 fields"),
    ("@every", "needs a duration"),
    ("@every soon", "is not a duration"),
    ("@every 0.5s", "shorter than the 1s minimum"),
    ("@every 30 s", "is not a duration"),
    ("@every 1h 30m", "is not a duration"),
    ("@every 1.0005s", "whole number of milliseconds"),
    ("@every 9000h", "maximum of 366 days"),
    ("@reboot", "unknown schedule"),
])
def test_parse_schedule_rejects(text, fragment):
    with pytest.raises(ScheduleError, match=fragment):
        Schedule.parse(text)


def test_find_cycle():
    assert find_cycle({"a": ["b"], "b": ["c"], "c": []}) is None
    assert find_cycle({"a": ["b"], "b": ["a"]}) == ["a", "b", "a"]
    assert find_cycle({"x": [], "a": ["b"], "b": ["c"], "c": ["b"]}) == ["b", "c", "b"]


def test_format_key_path():
    assert format_key_path(("roles", "w", "command", 0)) == "roles.w.command[0]"
    assert format_key_path(()) == ""


def test_config_error_str_is_first_error_plus_count():
    error = ConfigError("f.yaml", ["f.yaml: a: one", "f.yaml: b: two\nlines"])
    assert str(error) == "f.yaml: a: one (+1 more)"
    assert error.errors == ["f.yaml: a: one", "f.yaml: b: two lines"]
    assert str(ConfigError("f.yaml", ["f.yaml: a: one"])) == "f.yaml: a: one"


def _executable(path):
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_find_command_searches_the_given_path(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tool = _executable(bin_dir / "tool")
    assert find_command(["tool", "--x"], None, str(bin_dir)) == str(tool)
    assert find_command(["tool"], None, str(tmp_path)) is None
    assert find_command(["sh"], None, os.defpath) is not None


def test_find_command_resolves_relative_paths_against_cwd(tmp_path):
    tool = _executable(tmp_path / "run.sh")
    (tmp_path / "data.txt").write_text("not executable")
    assert find_command(["./run.sh"], str(tmp_path), "") == str(tool)
    assert find_command(["./data.txt"], str(tmp_path), "") is None
    assert find_command(["./missing"], str(tmp_path), "") is None
    assert find_command([], None, None) is None and find_command([""], None, None) is None


def test_schema_patterns_are_the_parsers_patterns():
    """One grammar: the JSON Schema's duration and size patterns are the parser's own."""
    import json
    from pathlib import Path

    from etcdvisor.config import schema_text
    from etcdvisor.config.durations import DURATION_PATTERN, SIZE_PATTERN

    for text in (schema_text(), (Path(__file__).resolve().parents[2] / "schemas" / "config.schema.json").read_text()):
        defs = json.loads(text)["$defs"]
        assert defs["duration"]["anyOf"][1]["pattern"] == DURATION_PATTERN
        assert defs["size"]["anyOf"][1]["pattern"] == SIZE_PATTERN
