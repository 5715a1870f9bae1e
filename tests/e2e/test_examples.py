"""Every example validates, and the pipeline example runs end to end against a
real etcd: the job, the API after it, a published message handled from stdin,
and the wait-group batch released from the CLI."""

import os
import shlex
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from etcdvisor.testing import wait_for

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
pytestmark = pytest.mark.slow


def cli(*args, env=None, input=None, cwd=None):
    return subprocess.run([sys.executable, "-m", "etcdvisor.cli", *args], capture_output=True,
                          env=env, input=input, timeout=60, cwd=cwd)


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.yaml") if p.name != "docker-compose.yaml"))
def test_example_validates(name):
    done = cli("validate", str(EXAMPLES / name))
    assert done.returncode == 0, done.stderr.decode()


def header_commands(path: Path) -> list[list[str]]:
    """The ``supervisor ...`` command lines of an example's header comment, in order."""
    commands = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        words = shlex.split(line.lstrip("# "), comments=True)
        while words and "=" in words[0]:
            words = words[1:]  # VAR=value prefixes
        if words[:1] == ["supervisor"]:
            commands.append(words[1:])
    return commands


def test_pipeline_example_runs_as_its_header_says_on_a_fresh_cluster(etcd_url, tmp_path):
    """Each header command exits 0 on a fresh cluster, in the header's order (issue 19, 1.9:
    the header used to suggest a 'waitgroup done' that fails on a fresh cluster)."""
    env = dict(os.environ, ETCDVISOR_ENDPOINTS=etcd_url, ETCDVISOR_CLUSTER=f"pipe-{uuid.uuid4().hex[:8]}",
               ETCDVISOR_MEMBER_ID="m1", PYTHONUNBUFFERED="1")
    commands = header_commands(EXAMPLES / "pipeline.yaml")
    assert [c[0] for c in commands] == ["waitgroup", "run", "publish", "waitgroup"], commands
    out = tmp_path / "out"
    text = lambda: out.read_text(errors="replace")  # noqa: E731
    proc = None
    repo = EXAMPLES.parent  # the header's paths are relative to the repository
    try:
        for command in commands:
            if command[0] == "run":
                with open(out, "wb") as sink:
                    proc = subprocess.Popen([sys.executable, "-m", "etcdvisor.cli", *command],
                                            env=env, stdout=sink, stderr=subprocess.STDOUT, cwd=repo)
                wait_for(lambda: "api: started" in text(), 30, "the api after the migration")
                assert text().index("job succeeded") < text().index("api: started")
                assert "processing the batch" not in text(), "the wait group holds the batch back"
                continue
            done = cli(*command, env=env, cwd=repo)
            assert done.returncode == 0, (command, done.stderr.decode())
            if command[0] == "publish":
                wait_for(lambda: "b'{\"image\": 42}'" in text(), 20, "the message handled from stdin")
        wait_for(lambda: "processing the batch" in text(), 20, "the batch after the wait group")
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0


def test_the_readme_config_validates(tmp_path):
    """README.md's example config is part of the contract: keep it valid."""
    readme = (EXAMPLES.parent / "README.md").read_text()
    block = readme.split("## A config", 1)[1].split("```yaml", 1)[1].split("```", 1)[0]
    path = tmp_path / "readme.yaml"
    path.write_text(block)
    done = cli("validate", str(path))
    assert done.returncode == 0, done.stderr.decode()
