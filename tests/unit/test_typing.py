"""``mypy --strict`` on the whole package (issue 18, section 3).

CI (``.ci/run``) runs ``mypy --strict src/etcdvisor`` before the tests, and a bare ``mypy``
from the repo root checks the same through ``[tool.mypy]`` in pyproject.toml. These tests
keep the two true and together: the whole package is in scope, strict, and no override
takes a module of the project out of it or loosens a flag for it.
"""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _mypy_config() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]


def test_a_bare_mypy_checks_the_whole_package_strictly():
    config = _mypy_config()
    assert config["files"] == ["src/etcdvisor"]
    assert config["strict"] is True
    assert "ignore-without-code" in config["enable_error_code"]
    loosened = {flag: value for flag, value in config.items()
                if flag.startswith(("disallow_", "warn_", "check_", "strict_", "no_implicit_")) and value is not True}
    assert loosened == {}, "a global flag is weaker than --strict"


def test_no_override_excepts_a_module_of_the_project():
    for override in _mypy_config().get("overrides", []):
        modules = override["module"] if isinstance(override["module"], list) else [override["module"]]
        ours = [m for m in modules if m == "etcdvisor" or m.startswith("etcdvisor.")]
        assert ours == [], f"an override names project modules {ours}: fix their types instead"
        assert set(override) <= {"module", "ignore_missing_imports"}, override


def test_ci_runs_mypy_strict_on_the_whole_package():
    script = (ROOT / ".ci" / "run").read_text()
    commands = [line for line in script.splitlines() if re.match(r"\s*\.venv/bin/mypy\b", line)]
    assert commands == [".venv/bin/mypy --strict src/etcdvisor"]
