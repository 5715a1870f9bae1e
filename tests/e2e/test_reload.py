"""Reload: SIGHUP applies a role diff; untouched roles keep their children;
a bad file keeps the running config."""

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

pytestmark = pytest.mark.slow

CHILD = ("import os, time; open(os.environ['REC'], 'a').write(os.environ['ROLE'] + ' ' + str(os.getpid()) + chr(10));"
         " time.sleep(1000)")


def config(etcd_url, cluster, rec, roles):
    body = {"cluster": cluster, "etcd": {"endpoints": [etcd_url]}, "member": {"id": "m1", "ttl": 10},
            "roles": {name: {"type": "singleton", "command": [sys.executable, "-c", CHILD],
                             "env": {"REC": str(rec), **extra}, "stop_timeout": 1}
                      for name, extra in roles.items()}}
    return json.dumps(body)  # JSON is YAML


def starts(rec):
    if not rec.exists():
        return []
    return [line.split() for line in rec.read_text().splitlines()]


def wait_for(predicate, timeout=30):  # generous: a loaded machine starts a supervisor slowly
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail("timed out")


def test_sighup_applies_role_diff_and_keeps_untouched_children(etcd_url, tmp_path):
    rec = tmp_path / "rec"
    cfg = tmp_path / "c.yaml"
    cluster = f"reload-{uuid.uuid4().hex[:8]}"
    cfg.write_text(config(etcd_url, cluster, rec, {"keep": {}, "change": {"V": "1"}, "drop": {}}))
    log = open(tmp_path / "log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "etcdvisor.cli", "run", str(cfg)],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: {r for r, _ in starts(rec)} == {"keep", "change", "drop"})
        first = {r: int(p) for r, p in starts(rec)}
        cfg.write_text(config(etcd_url, cluster, rec, {"keep": {}, "change": {"V": "2"}, "new": {}}))
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: [r for r, _ in starts(rec)].count("change") == 2 and
                 any(r == "new" for r, _ in starts(rec)))
        wait_for(lambda: not _alive(first["drop"]))
        assert _alive(first["keep"]), "an untouched role's child was restarted"
        assert not _alive(first["change"])
        assert [r for r, _ in starts(rec)].count("keep") == 1
        # a bad file keeps everything running
        cfg.write_text("cluster: [unclosed\n")
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload refused" in (tmp_path / "log").read_text())
        assert proc.poll() is None and _alive(first["keep"])
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        log.close()
    text = (tmp_path / "log").read_text()
    assert "reload refused, keeping the running config" in text
    for _, pid in starts(rec):
        assert not _alive(int(pid))


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is not alive
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ")[1][0] != "Z"
    except OSError:
        return False
