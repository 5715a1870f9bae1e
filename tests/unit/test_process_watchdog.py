"""Watchdog helper: deadlines, extension, and a frozen or killed supervisor."""

import json
import os
import signal
import subprocess
import sys
import time

import psutil

from etcdvisor.process.spawn import ChildSpec, spawn
from etcdvisor.process.watchdog import Watchdog

STUBBORN = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"

# A supervisor-like parent: spawns a child (which starts a grandchild in its group)
# through the process API, registers the group with the watchdog, reports, then idles.
SUPERVISOR = """
import json, os, sys, time
from etcdvisor.process.spawn import ChildSpec, spawn
from etcdvisor.process.watchdog import Watchdog
term_in, kill_in = [None if a == "-" else float(a) for a in sys.argv[1:3]]
code = ("import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "g = subprocess.Popen([sys.executable, '-c', %r]); print(g.pid, flush=True); "
        "time.sleep(60)" % sys.argv[3])
watchdog = Watchdog()
watchdog.start()
proc = spawn(ChildSpec(name="victim", argv=(sys.executable, "-c", code), env=dict(os.environ)))
grandchild = int(proc.stdout.readline())
now = time.monotonic()
watchdog.register(proc.pid, None if term_in is None else now + term_in,
                  None if kill_in is None else now + kill_in)
print(json.dumps({"child": proc.pid, "grandchild": grandchild, "watchdog": watchdog.pid,
                  "kill_at": None if kill_in is None else now + kill_in}), flush=True)
while True:
    time.sleep(1)
"""


def _dead(pid):
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait_dead(pid, until):
    while time.monotonic() < until:
        if _dead(pid):
            return True
        time.sleep(0.02)
    return _dead(pid)


def _kill(*pids):
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def _start_supervisor(term_in, kill_in):
    parent = subprocess.Popen([sys.executable, "-c", SUPERVISOR, term_in, kill_in, STUBBORN],
                              stdout=subprocess.PIPE)
    info = json.loads(parent.stdout.readline())
    return parent, info


def test_term_then_kill_deadlines_reach_the_group():
    watchdog = Watchdog()
    watchdog.start()
    proc = spawn(ChildSpec(name="c", argv=(sys.executable, "-c", STUBBORN), env=dict(os.environ)),
                 capture_output=False)
    try:
        time.sleep(0.3)  # let it install SIG_IGN
        now = time.monotonic()
        watchdog.register(proc.pid, now + 0.2, now + 0.8)
        assert proc.wait(timeout=4) == -signal.SIGKILL  # SIGTERM was ignored
        assert time.monotonic() >= now + 0.7
    finally:
        proc.kill()
        proc.wait()
        watchdog.stop()


def test_extend_postpones_and_unregister_forgets():
    watchdog = Watchdog()
    watchdog.start()
    spec = ChildSpec(name="c", argv=(sys.executable, "-c", "import time; time.sleep(60)"),
                     env=dict(os.environ))
    kept, forgotten = spawn(spec, capture_output=False), spawn(spec, capture_output=False)
    try:
        now = time.monotonic()
        watchdog.register(kept.pid, kill_at=now + 0.3)
        watchdog.register(forgotten.pid, kill_at=now + 0.3)
        watchdog.extend_many([(kept.pid, None, now + 30)])
        watchdog.unregister(forgotten.pid)
        time.sleep(1.0)
        assert kept.poll() is None and forgotten.poll() is None
        watchdog.stop()  # quiet exit: kills nothing
        time.sleep(0.2)
        assert kept.poll() is None and forgotten.poll() is None
    finally:
        for proc in (kept, forgotten):
            proc.kill()
            proc.wait()
        watchdog.stop()


def test_frozen_supervisor_child_is_killed_by_kill_at():
    parent, info = _start_supervisor("0.3", "1.0")
    try:
        parent.send_signal(signal.SIGSTOP)
        assert psutil.Process(info["watchdog"]).status() != psutil.STATUS_STOPPED
        assert not _dead(info["child"])
        slack = 2.0
        assert _wait_dead(info["child"], info["kill_at"] + slack)
        assert _wait_dead(info["grandchild"], info["kill_at"] + slack)
    finally:
        parent.send_signal(signal.SIGCONT)
        parent.kill()
        parent.wait()
        _kill(info["child"], info["grandchild"])


def test_killed_supervisor_leaves_no_child_or_grandchild():
    parent, info = _start_supervisor("-", "-")  # no deadlines at all
    try:
        time.sleep(0.2)
        assert not _dead(info["child"]) and not _dead(info["grandchild"])
        parent.kill()
        parent.wait()
        killed_at = time.monotonic()
        assert _wait_dead(info["child"], killed_at + 1.5)       # parent-death signal
        assert _wait_dead(info["grandchild"], killed_at + 1.5)  # watchdog on EOF
        assert _wait_dead(info["watchdog"], killed_at + 1.5)    # and the helper exits
    finally:
        _kill(info["child"], info["grandchild"], info["watchdog"])


def test_helper_imports_only_the_minimal_standard_library():
    code = ("import sys, etcdvisor.process.watchdog_main; "
            "print(sorted(m for m in ('psutil', 'subprocess', 'threading', 'json', 'ctypes') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=10, check=True).stdout
    assert out.strip() == "[]"


# The manager batches watchdog commands until the end of its tick. A supervisor frozen
# (SIGSTOP) between the fork of a lease-bound child and that flush must not leave the
# child unguarded: its deadlines reach the helper before the spawn (by its marker).
FROZEN_AFTER_FORK = """
import os, sys, time
from etcdvisor.process.child import ChildProcess
from etcdvisor.process.spawn import ChildSpec
from etcdvisor.process.watchdog import Watchdog
watchdog = Watchdog(batched=True)
watchdog.start()
watchdog.flush()
spec = ChildSpec(name="bound", argv=(sys.executable, "-c", sys.argv[1]), env=dict(os.environ),
                 lease_bound=True, stop_timeout=0.5)
child = ChildProcess(spec, watchdog=watchdog, output=None)
now = time.monotonic()
child.set_lease_deadlines(now + 0.5, now + 1.0, sync_watchdog=False)
child.start(now)  # no flush(): the R line stays queued, as if frozen right here
print(child.pid, watchdog.pid, now + 1.0, flush=True)
time.sleep(60)
"""


def test_lease_bound_child_is_guarded_before_its_registration_is_flushed():
    parent = subprocess.Popen([sys.executable, "-c", FROZEN_AFTER_FORK, STUBBORN], stdout=subprocess.PIPE)
    child, helper, kill_at = parent.stdout.readline().split()
    child, helper, kill_at = int(child), int(helper), float(kill_at)
    try:
        assert _wait_dead(child, kill_at + 3.0), "the helper never killed the unflushed child"
        assert time.monotonic() >= kill_at - 0.6  # the SIGTERM was ignored: it took the SIGKILL
    finally:
        parent.kill()
        parent.wait()
        _kill(child, helper)


def test_pending_entries_are_replayed_until_registered():
    watchdog = Watchdog()
    watchdog._pending["t1"] = (1.5, 2.0, 15)
    watchdog._table[7] = (None, None, 15, "t2")
    assert watchdog._replay() == "R 7 15 - - t2\nP t1 15 1.5 2.0\n"
    watchdog.register(8, tag="t1")  # no helper running: nothing is written
    assert "P t1" not in watchdog._replay()
