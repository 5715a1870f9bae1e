"""Durations, sizes, schedules, find_command and cycle detection."""

from __future__ import annotations

import os
import stat

import pytest

from etcdvisor.config import find_command, format_duration, parse_duration, parse_schedule, parse_size
from etcdvisor.config.errors import ConfigError, format_key_path
from etcdvisor.config.semantic import find_cycle


@pytest.mark.parametrize("text, seconds", [
    (5, 5.0), (0.25, 0.25), (0, 0.0), ("10", 10.0), ("1.5", 1.5), ("500ms", 0.5), ("10s", 10.0),
    ("2m", 120.0), ("1h", 3600.0), ("1m30s", 90.0), ("1h 2m 3s", 3723.0), ("1.5h", 5400.0), (" 7s ", 7.0),
])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "5 secs", "1d", "-5s", "5s5", "ms", True, None, -1, [5], float("nan")])
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


@pytest.mark.parametrize("text", ["lots", "1 KiBs", "1TiB", "-1", -1, True, 1.5, "KiB"])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError):
        parse_size(text)


@pytest.mark.parametrize("text, cron, every", [
    ("*/5 * * * *", "*/5 * * * *", None),
    ("  0   3 * *   MON-FRI ", "0 3 * * MON-FRI", None),
    ("@hourly", "0 * * * *", None),
    ("@DAILY", "0 0 * * *", None),
    ("@midnight", "0 0 * * *", None),
    ("@weekly", "0 0 * * 0", None),
    ("@monthly", "0 0 1 * *", None),
    ("@yearly", "0 0 1 1 *", None),
    ("@annually", "0 0 1 1 *", None),
    ("@every 30s", None, 30.0),
    ("@every 1h30m", None, 5400.0),
])
def test_parse_schedule(text, cron, every):
    schedule = parse_schedule(text)
    assert (schedule.text, schedule.cron, schedule.every) == (text, cron, every)


@pytest.mark.parametrize("text, fragment", [
    ("61 * * * *", "Bad minute"),
    ("* * 30 2 *", "Bad day-of-month"),
    ("* * *", "has 3 fields"),
    ("0 0 0 * * *", "has 6 fields"),
    ("@every", "needs a duration"),
    ("@every soon", "is not a duration"),
    ("@every 0.5s", "too frequent"),
    ("@reboot", "unknown schedule"),
])
def test_parse_schedule_rejects(text, fragment):
    with pytest.raises(ValueError, match=fragment):
        parse_schedule(text)


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
