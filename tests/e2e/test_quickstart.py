"""The README quickstart: ``supervisor run examples/quickstart.yaml`` starts a
private etcd, a sharded worker and a singleton compactor, and stops cleanly."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

import psutil
import pytest

from .conftest import EXAMPLES, pid_alive, read_records, wait_for, wait_pids_gone

pytestmark = [pytest.mark.slow]


def test_quickstart_runs_and_stops_cleanly(tmp_path):
    # a copy, so that state (the embedded etcd's data) lands in tmp_path
    text = (EXAMPLES / "quickstart.yaml").read_text()
    assert "state_dir: ../.etcdvisor" in text
    (tmp_path / "quickstart.yaml").write_text(text.replace("state_dir: ../.etcdvisor", "state_dir: state"))
    shutil.copy(EXAMPLES / "worker.py", tmp_path / "worker.py")
    record = tmp_path / "records.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDVISOR_")}
    env.update(WORK_RECORD=str(record), PYTHONUNBUFFERED="1")
    out_path = tmp_path / "supervisor.out"
    with open(out_path, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "etcdvisor.cli", "run", "quickstart.yaml"],
                                cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    try:
        def started():
            starts = [r for r in read_records(record) if r["event"] == "start"]
            return starts if {r["role"] for r in starts} == {"worker", "compactor"} else None

        starts = wait_for(started, 60, "a worker and a compactor child")
        by_role = {r["role"]: r for r in starts}
        assert (by_role["worker"]["index"], by_role["worker"]["count"]) == ("0", "1")
        assert by_role["compactor"]["leader"] == "1" and int(by_role["compactor"]["leader_token"]) > 0
        assert (tmp_path / "state" / "etcd").is_dir(), "embedded etcd data not under state_dir"
        output = out_path.read_text()
        assert "embedded etcd listening on http://127.0.0.1:" in output
        assert "ETCDVISOR_ENDPOINTS=" in output  # tells the user how to join

        tree = psutil.Process(proc.pid).children(recursive=True)
        etcd = [p for p in tree if p.name() == "etcd"]
        assert len(etcd) == 1, [p.cmdline() for p in tree]

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, out_path.read_text()
        assert not wait_pids_gone([p.pid for p in tree], 2.0), "processes left after SIGTERM"
        assert not pid_alive(etcd[0].pid)
        stops = {r["role"] for r in read_records(record) if r["event"] == "stop"}
        assert stops == {"worker", "compactor"}
        assert "Traceback" not in out_path.read_text()
    finally:
        if proc.poll() is None:
            for child in psutil.Process(proc.pid).children(recursive=True):
                child.kill()
            proc.kill()
            proc.wait()
