"""Every example validates, and the pipeline example runs end to end against a
real etcd: the job, the API after it, a published message handled from stdin,
and the wait-group batch released from the CLI."""

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from etcdvisor.testing import wait_for

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
pytestmark = pytest.mark.slow


def cli(*args, env=None, input=None):
    return subprocess.run([sys.executable, "-m", "etcdvisor.cli", *args], capture_output=True,
                          env=env, input=input, timeout=60)


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.yaml") if p.name != "docker-compose.yaml"))
def test_example_validates(name):
    done = cli("validate", str(EXAMPLES / name))
    assert done.returncode == 0, done.stderr.decode()


def test_pipeline_example_runs(etcd_url, tmp_path):
    env = dict(os.environ, ETCDVISOR_ENDPOINTS=etcd_url, ETCDVISOR_CLUSTER=f"pipe-{uuid.uuid4().hex[:8]}",
               ETCDVISOR_MEMBER_ID="m1", PYTHONUNBUFFERED="1")
    assert cli("waitgroup", "add", "uploads", "1", env=env).returncode == 0
    out = tmp_path / "out"
    with open(out, "wb") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "etcdvisor.cli", "run", str(EXAMPLES / "pipeline.yaml")],
                                env=env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        text = lambda: out.read_text(errors="replace")  # noqa: E731
        wait_for(lambda: "api: started" in text(), 30, "the api after the migration")
        assert text().index("job succeeded") < text().index("api: started")
        assert "processing the batch" not in text()
        published = cli("publish", "jobs", "-", env=env, input=b'{"image": 42}')
        assert published.returncode == 0, published.stderr
        wait_for(lambda: "b'{\"image\": 42}'" in text(), 20, "the message handled from stdin")
        assert cli("waitgroup", "done", "uploads", env=env).returncode == 0
        wait_for(lambda: "processing the batch" in text(), 20, "the batch after the wait group")
    finally:
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
