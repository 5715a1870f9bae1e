"""A SIGTERMed supervisor leaves nothing behind: no child, no grandchild, no
watchdog helper, no member key (the lease is revoked, not left to expire)."""

from __future__ import annotations

import sys

import psutil
import pytest

from .conftest import WORKER, pid_alive, wait_for, wait_pids_gone

pytestmark = [pytest.mark.slow, pytest.mark.etcd]


def _alive(procs: list[psutil.Process]) -> list[str]:
    """The processes of ``procs`` that still run (same pid *and* creation time)."""
    left = []
    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                left.append(f"{proc.pid} {' '.join(proc.cmdline())}")
        except psutil.NoSuchProcess:
            pass
    return left


def test_sigterm_leaves_no_process_and_no_member_key(fleet):
    # a grandchild in the child's group, one that escaped it (setsid), and the worker
    shell_cmd = f"sleep 1000 & setsid sleep 1001 & {sys.executable} {WORKER}"
    config = fleet.write_config({
        "worker": fleet.worker_role("sharded", settle="0s"),
        "lead": fleet.worker_role("singleton"),
        "shell": {**fleet.worker_role("sharded", settle="0s"), "command": ["sh", "-c", shell_cmd]},
    })
    member = fleet.start("m0", config)
    wait_for(lambda: {i.role for i in fleet.history().live()} == {"worker", "lead", "shell"}, 30,
             "three children started")

    def sleeper_started():
        return [p for p in member.descendants() if p.name() == "sleep"]

    wait_for(lambda: len(sleeper_started()) == 2, 10, "the shell's background sleeps")
    tree = member.descendants()
    watchdog = member.watchdog_pid()
    assert watchdog is not None, [p.cmdline() for p in tree]
    names = sorted(p.name() for p in tree)
    assert "sleep" in names and "sh" in names, names
    assert fleet.backend().get(fleet.member_key("m0")) is not None

    member.term()
    assert member.wait(15) == 0, member.output()
    # revoked, not expired: gone as soon as the supervisor has exited
    assert fleet.backend().get(fleet.member_key("m0")) is None, "member key left behind after SIGTERM"
    left = _alive(tree)
    if left:  # the kernel may take a moment to finish a SIGKILLed process
        wait_pids_gone([p.pid for p in tree], 1.0)
        left = _alive(tree)
    assert not left, "processes left behind after SIGTERM:\n" + "\n".join(left)
    assert not pid_alive(watchdog)
    history = fleet.history()
    # direct children get their stop signal and time to act on it (a stop line);
    # the shell's worker is a grandchild, SIGKILLed with the group once sh exits
    assert {i.role for i in history.of() if i.end_recorded} >= {"worker", "lead"}, \
        "children should have been stopped with their stop signal (they record a stop line)"
    output = member.output()
    assert "Traceback" not in output
    assert "all children stopped; leaving cluster" in output
