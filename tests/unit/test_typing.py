"""The type checker as a ratchet (issue 8, item 9).

A bare ``mypy`` from the repo root checks ``src/etcdvisor`` with the settings in
``[tool.mypy]`` (strict on coord/, runtime/ and process/). Until every file
passes, the files that still fail are listed here: any error in another file
fails this test, so a clean file stays clean. Take a file off the list when it
passes (the test says so).
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Files with mypy errors when the checker was added (to be fixed by their owners).
STILL_FAILING: frozenset[str] = frozenset()

# Packages and modules checked with every flag of ``mypy --strict`` (pyproject.toml); the
# rest of the package is on its way (issue 18: roles/sharded.py and roles/shard_*.py).
STRICT = {"etcdvisor.coord.*", "etcdvisor.runtime.*", "etcdvisor.process.*", "etcdvisor.cli.*", "etcdvisor.recipes.*",
          "etcdvisor.status.*", "etcdvisor.testing.*", "etcdvisor.config.*",
          "etcdvisor.dashboard", "etcdvisor.kv", "etcdvisor.kv_watch", "etcdvisor.logs", "etcdvisor.etcd_server",
          "etcdvisor.timing", "etcdvisor.events",
          "etcdvisor.roles", "etcdvisor.roles.base", "etcdvisor.roles.assignment", "etcdvisor.roles.handoff",
          "etcdvisor.roles.resume", "etcdvisor.roles.singleton", "etcdvisor.roles.cron", "etcdvisor.roles.job",
          "etcdvisor.roles.topic"}

ERROR = re.compile(r"^src/etcdvisor/(?P<file>[^:]+):\d+: error: ")


@pytest.mark.slow  # seconds of real time: left out of the fast part (-m "not slow")
def test_mypy_reports_nothing_outside_the_files_still_failing():
    run = subprocess.run([sys.executable, "-m", "mypy", "--no-error-summary", "--no-pretty"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode in (0, 1), run.stdout + run.stderr  # 2: mypy itself failed (bad config)
    errors = [line for line in run.stdout.splitlines() if ERROR.match(line)]
    failing = {ERROR.match(line)["file"] for line in errors}
    regressions = [line for line in errors if ERROR.match(line)["file"] not in STILL_FAILING]
    assert regressions == [], "\n".join(regressions)
    fixed = sorted(STILL_FAILING - failing)
    assert fixed == [], f"these files pass mypy now: take them off STILL_FAILING: {fixed}"


def test_strict_is_spelled_out_per_package():
    """``strict = true`` in an override section makes every module strict (mypy 2.x), so
    the strict flags are listed one by one; this checks the strict packages get them."""
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    assert "strict" not in config
    strict = [o for o in config["overrides"] if "disallow_untyped_defs" in o]
    assert len(strict) == 1 and all("strict" not in o for o in config["overrides"])
    assert set(strict[0]["module"]) == STRICT
    for flag in ("disallow_any_generics", "disallow_subclassing_any", "disallow_untyped_calls",
                 "disallow_incomplete_defs", "check_untyped_defs", "disallow_untyped_decorators",
                 "warn_unused_ignores", "warn_return_any", "no_implicit_reexport", "strict_equality",
                 "extra_checks"):
        assert strict[0][flag] is True, flag
