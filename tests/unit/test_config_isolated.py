"""The config checked in a child process equals the in-process load, and
problems come back one line each; the caller never imports jsonschema."""

import subprocess
import sys
from pathlib import Path

import pytest

from etcdvisor.config import ConfigError, load
from etcdvisor.config.isolated import load_isolated

DATA = Path(__file__).resolve().parents[1] / "data"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_isolated_load_equals_load():
    config = load_isolated(str(EXAMPLES / "fleet.yaml"))
    assert config == load(str(EXAMPLES / "fleet.yaml"), default_member_id=config.member.id)
    with pytest.raises(TypeError):
        config.roles["worker"].env["X"] = "1"  # still read-only after the trip


def test_isolated_problems_are_one_line_each():
    with pytest.raises(ConfigError) as info:
        load_isolated(str(DATA / "bad" / "no_slack.yaml"))
    assert "leaves no slack" in str(info.value) and "\n" not in str(info.value)


def test_the_caller_never_imports_jsonschema():
    code = ("import sys; from etcdvisor.config.isolated import load_isolated; "
            f"load_isolated({str(EXAMPLES / 'fleet.yaml')!r}); print('jsonschema' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr
