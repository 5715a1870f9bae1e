"""e2e (issue 16, section 5): files a member writes stay where the user chose,
and nothing is left behind.

Real ``supervisor run`` processes on real etcd, each with its own ``TMPDIR``:

* SIGKILL of the supervisor: its watchdog removes the directory of the
  children's config files (which may hold secrets);
* at start, ``run`` removes this member's stale directories (owner dead),
  keeps a live owner's and another member's;
* a ``peers.file`` that escapes the role's cwd: ``run`` refuses the config
  (one line naming the key); one that escapes through a symlink at run time
  fails its role (one line naming the key), nothing is written outside, and
  the member's other roles keep running.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from etcdvisor.runtime.private_files import owner_tag, process_start

from .conftest import wait_for, wait_pids_gone
from .test_seed_wiring import seed_role, starts


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_sigkilled_supervisor_leaves_no_config_file_and_run_removes_stale_ones(fleet):
    tmpdir = fleet.dir / "tmp"
    tmpdir.mkdir()
    tag = owner_tag(fleet.cluster, "m0")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        stale = tmpdir / f"{tag}{dead_pid()}.42-stale1"
        live = tmpdir / f"{tag}{sleeper.pid}.{process_start(sleeper.pid)}-live01"
        other = tmpdir / f"{owner_tag(fleet.cluster, 'm9')}{dead_pid()}.42-other1"
        for path in (stale, live, other):
            path.mkdir()
            (path / "old.json").write_text('{"SECRET": "s"}')
        rec = fleet.dir / "seed.jsonl"
        role = seed_role(fleet, "singleton", rec, ("TOKEN",),
                         config={"TOKEN": {"item": f"token{os.urandom(3).hex()}", "default": "s3cret"}})
        member = fleet.start("m0", fleet.write_config({"solo": role}), env={"TMPDIR": str(tmpdir)})
        wait_for(lambda: starts(rec, role="solo"), 30, "the child with its config file")
        (started,) = starts(rec, role="solo")
        config_dir = Path(started["config_file"]).parent
        assert started["config"] == {"TOKEN": "s3cret"} and config_dir.parent == tmpdir
        assert not stale.exists(), "a stale directory of this member (owner dead) was kept"
        assert live.exists() and other.exists()  # a live owner's, another member's
        assert "removed 1 stale config file directory" in member.output()

        member.kill()
        wait_for(lambda: not config_dir.exists(), 10, "the watchdog to remove the config file directory")
        assert not wait_pids_gone([started["pid"]], 10)
        assert sorted(p.name for p in tmpdir.iterdir()) == sorted([live.name, other.name])
    finally:
        sleeper.kill()
        sleeper.wait()


def test_run_refuses_a_peers_file_outside_the_cwd(fleet):
    role = fleet.worker_role("singleton", peers={"api": {"file": "../../escaped.json"}})
    member = fleet.start("m0", fleet.write_config({"gw": role}))
    assert member.wait(30) != 0
    out = member.output().strip()
    assert len(out.splitlines()) == 1 and "Traceback" not in out, out
    assert "roles.gw.peers.api.file" in out and "outside the role's working directory" in out, out
    assert not (fleet.dir.parent.parent / "escaped.json").exists()


def test_a_symlink_out_of_the_cwd_fails_the_role_not_the_member(fleet):
    app, outside = fleet.dir / "app", fleet.dir / "outside"
    app.mkdir()
    outside.mkdir()
    (app / "peers").symlink_to(outside)
    gw = fleet.worker_role("singleton", cwd="app", peers={"api": {"file": "peers/api.json"}})
    config = fleet.write_config({"gw": gw, "work": fleet.worker_role("singleton")})
    member = fleet.start("m0", config)
    wait_for(lambda: "FAILED" in member.output(), 30, "role gw to fail")
    wait_for(lambda: [i for i in fleet.history().live("work") if i.leader], 30, "the other role's child")
    failed = [line for line in member.output().splitlines() if "FAILED" in line]
    assert len(failed) == 1 and "role gw: FAILED: peers file: roles.gw.peers.api.file: 'peers/api.json'" \
        in failed[0], failed
    assert "outside the role's working directory" in failed[0]
    assert list(outside.iterdir()) == []
    assert not fleet.history().of("gw")  # its child never started
    assert member.running() and "Traceback" not in member.output()
