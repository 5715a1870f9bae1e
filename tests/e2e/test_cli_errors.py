"""The CLI on bad input: exit code and exactly one line, no traceback, nothing
started. The wording of each message is covered by tests/unit/test_config_errors.py;
here the point is what a user sees from the command line."""

from __future__ import annotations

import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from etcdvisor.testing import free_port

from .conftest import REPO

pytestmark = [pytest.mark.slow]

BAD = REPO / "tests" / "data" / "bad"
BAD_FILES = sorted(BAD.glob("*.yaml"))


def cli(*args: str, env: dict | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    import os

    full_env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDVISOR_")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "etcdvisor.cli", *args], capture_output=True,
                          text=True, env=full_env, timeout=timeout, stdin=subprocess.DEVNULL)


def one_line(result: subprocess.CompletedProcess) -> str:
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{result.stderr}"
    assert "Traceback" not in result.stderr + result.stdout
    return lines[0]


def test_bad_files_exist():
    assert len(BAD_FILES) >= 10


def test_validate_every_bad_file():
    """One process per file (run in parallel): exit 2, one line naming the file."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda p: (p, cli("validate", str(p))), BAD_FILES))
    problems = []
    for path, result in results:
        lines = result.stderr.splitlines()
        if result.returncode == 0:
            problems.append(f"{path.name}: exit 0")
        if len(lines) != 1:
            problems.append(f"{path.name}: {len(lines)} lines: {result.stderr!r}")
        elif not lines[0].startswith(str(path)):
            problems.append(f"{path.name}: line does not name the file: {lines[0]!r}")
        if "Traceback" in result.stderr + result.stdout:
            problems.append(f"{path.name}: traceback")
    assert not problems, "\n".join(problems)
    assert {r.returncode for _, r in results} == {2}


def test_validate_good_file_exits_zero():
    result = cli("validate", str(REPO / "examples" / "quickstart.yaml"))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert "ok" in result.stdout


def _recording_config(tmp_path: Path, roles: str, endpoints: str) -> Path:
    path = tmp_path / "etcdvisor.yaml"
    path.write_text(f"cluster: e2e-cli\netcd: {{endpoints: ['{endpoints}'], timeout: 1s}}\n"
                    f"member: {{ttl: 10, state_dir: {tmp_path / 'state'}}}\nroles:\n{roles}")
    return path


def _role(name: str, command: str, extra: str = "") -> str:
    return (f"  {name}:\n    type: sharded\n    command: {command}\n"
            f"    env: {{WORK_RECORD: {{record}}}}\n{extra}")


def _worker_role(tmp_path: Path, name: str, extra: str = "") -> str:
    record = tmp_path / "records.jsonl"
    command = f"['{sys.executable}', '{REPO / 'examples' / 'worker.py'}']"
    return _role(name, command, extra).replace("{record}", str(record))


def test_run_bad_file_prints_one_line_and_starts_nothing(tmp_path, etcd_url):
    # two roles that both break the slack rule: two problems, still one line
    roles = (_worker_role(tmp_path, "a", "    stop_timeout: 10s\n")
             + _worker_role(tmp_path, "b", "    stop_timeout: 10s\n"))
    config = _recording_config(tmp_path, roles, etcd_url)
    assert cli("validate", str(config)).stderr.count("\n") == 2  # validate lists both
    result = cli("run", str(config))
    assert result.returncode == 2
    line = one_line(result)
    assert line.startswith(str(config)) and "stop_timeout" in line
    assert "(+1 more)" in line
    assert not (tmp_path / "records.jsonl").exists()


def test_run_single_bad_file(tmp_path):
    result = cli("run", str(BAD / "unknown_role_key.yaml"))
    assert result.returncode == 2
    assert one_line(result).startswith(str(BAD / "unknown_role_key.yaml"))


def test_run_missing_command_starts_nothing(tmp_path, etcd_url):
    from etcdvisor.coord import open_backend

    roles = _worker_role(tmp_path, "good") + _role("missing", "['/nonexistent/etcdvisor-no-such-program']")
    config = _recording_config(tmp_path, roles.replace("{record}", "x"), etcd_url)
    result = cli("run", str(config), env={"ETCDVISOR_MEMBER_ID": "cli-m0"})
    assert result.returncode != 0
    line = one_line(result)
    assert "/nonexistent/etcdvisor-no-such-program" in line and "roles.missing.command" in line
    assert not (tmp_path / "records.jsonl").exists(), "a child was started before the check"
    with open_backend(etcd_url, timeout=5) as backend:
        assert backend.get("/etcdvisor/e2e-cli/members/cli-m0") is None


def test_run_unreachable_etcd(tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    config = _recording_config(tmp_path, _worker_role(tmp_path, "good"), dead)
    started = time.monotonic()
    result = cli("run", str(config), timeout=60)
    assert result.returncode != 0
    line = one_line(result)
    assert dead in line and "etcd" in line
    assert time.monotonic() - started < 30
    assert not (tmp_path / "records.jsonl").exists()


def test_run_unreachable_etcd_from_environment(tmp_path, etcd_url):
    dead = f"http://127.0.0.1:{free_port()}"
    config = _recording_config(tmp_path, _worker_role(tmp_path, "good"), etcd_url)
    result = cli("run", str(config), env={"ETCDVISOR_ENDPOINTS": dead})
    assert result.returncode != 0
    assert dead in one_line(result)
    assert not (tmp_path / "records.jsonl").exists()
