"""Escape tracking: marker, lineage census, cgroup leaves, and the watchdog's final sweep.

Real processes: a child that ignores SIGTERM and double-forks a setsid daemon that also
ignores SIGTERM (the daemon is re-parented away from the child and leads its own
session and group)."""

import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from etcdvisor.process import cgroup as cgroup_mod
from etcdvisor.process import tracking
from etcdvisor.process.cgroup import AttachState, CgroupPool
from etcdvisor.process.child import ChildProcess, ChildState
from etcdvisor.process.spawn import ChildSpec, spawn
from etcdvisor.process.tracking import TAG_ENV, TreeTracker, read_tag
from etcdvisor.process.watchdog import HELPER_SCRIPT, Watchdog, helper_argv

HOSTILE = r'''
import os, signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
first = os.fork()
if first == 0:
    os.setsid()
    if os.fork() == 0:
        open(sys.argv[1] + ".%d" % os.getpid(), "w").close()
        while True:
            time.sleep(1)
    os._exit(0)
os.waitpid(first, 0)
if sys.argv[2] == "exit":
    sys.exit(0)
while True:
    time.sleep(1)
'''


def _live(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except OSError:
        return False


def _wait(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _daemon(tmp_path, prefix):
    _wait(lambda: list(tmp_path.glob(prefix.name + ".*")), 10, "the daemon")
    return int(next(tmp_path.glob(prefix.name + ".*")).name.rsplit(".", 1)[1])


def _hostile_spec(tmp_path, mode="stay", stop_timeout=0.3):
    prefix = tmp_path / f"daemon-{uuid.uuid4().hex[:8]}"
    spec = ChildSpec(name="hostile", argv=(sys.executable, "-S", "-c", HOSTILE, str(prefix), mode),
                     env=dict(os.environ), stop_timeout=stop_timeout)
    return spec, prefix


def _kill(*pids):
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def test_read_tag_takes_the_exact_variable_and_survives_garbage(tmp_path):
    env = {"X_" + TAG_ENV: "wrong", TAG_ENV: "abc123", "B": "\xff"}
    proc = subprocess.Popen([sys.executable, "-S", "-c", "import time; time.sleep(30)"],
                            env={k: v for k, v in env.items()})
    try:
        # Popen returns while exec may still be setting up the new stack (environ empty)
        _wait(lambda: read_tag(proc.pid) is not None, 5, "the exec'd environment")
        assert read_tag(proc.pid) == "abc123"
    finally:
        proc.kill()
        proc.wait()
    assert read_tag(proc.pid) is None  # gone
    assert read_tag(os.getpid()) == os.environ.get(TAG_ENV)


def test_stop_kills_a_double_forked_setsid_daemon_that_ignores_sigterm(tmp_path):
    spec, prefix = _hostile_spec(tmp_path)
    child = ChildProcess(spec)  # standalone tracker: scans /proc for the marker
    child.start(time.monotonic())
    daemon = _daemon(tmp_path, prefix)
    try:
        assert os.getsid(daemon) != os.getsid(child.pid)  # escaped its session
        assert os.getpgid(daemon) != child.pgid
        with open(f"/proc/{daemon}/stat", "rb") as fh:  # re-parented: not a descendant
            assert int(fh.read().rsplit(b")", 1)[1].split()[1]) != child.pid
        assert read_tag(daemon) == child.tag
        started = time.monotonic()
        child.stop(started)
        _wait(lambda: child.poll(time.monotonic()) is not None, 5, "the leader")
        assert child.state is ChildState.EXITED and child.returncode == -signal.SIGKILL
        assert time.monotonic() - started >= 0.25  # it had its grace period
        _wait(lambda: not _live(daemon), 3, "the daemon to die")
    finally:
        _kill(child.pid, daemon)


def test_a_leader_that_exits_on_its_own_leaves_no_daemon_after_the_census(tmp_path):
    spec, prefix = _hostile_spec(tmp_path, mode="exit")
    tracker = TreeTracker(lambda _pid: False, subreaper=False)
    child = ChildProcess(spec, tracker=tracker)
    child.start(time.monotonic())
    daemon = _daemon(tmp_path, prefix)
    try:
        _wait(lambda: child.poll(time.monotonic()) is not None, 5, "the leader to exit")
        assert child.returncode == 0 and _live(daemon)
        due = tracker.next_census()
        assert due is not None  # a reaped child with possible escapees: wake up for it
        tracker.census(max(due, time.monotonic()))
        _wait(lambda: not _live(daemon), 3, "the census to kill the daemon")
    finally:
        _kill(daemon)


def test_lineage_recognises_a_recorded_process_after_it_wipes_its_environment(tmp_path):
    # an orphan seen once with the marker keeps its owner, by (pid, start time)
    proc = subprocess.Popen([sys.executable, "-S", "-c", "import time; time.sleep(30)"],
                            env={**os.environ, TAG_ENV: "t1"})
    try:
        tracker = TreeTracker(lambda pid: pid != proc.pid, subreaper=True)
        tracker.child_started("t1", 999999)
        # until its exec, the new process shows the parent's environment (no marker yet):
        # poll the census for it, never assume the exec is done
        deadline = time.monotonic() + 10
        tracker.census(time.monotonic())
        while True:
            if tracker._lineage or time.monotonic() > deadline:
                break
            time.sleep(0.02)
            tracker._census()  # (census() runs at most every CENSUS_INTERVAL)
        assert tracker._lineage and set(tracker._lineage.values()) == {"t1"}
        # the process execs with a clean environment (simulated: the marker reads as
        # absent); the lineage recorded while it lived still names its owner
        saved, tracking.read_tag = tracking.read_tag, lambda pid: None
        try:
            assert proc.pid in tracker.members("t1", None)
            assert proc.pid not in tracker.members("other", None)
        finally:
            tracking.read_tag = saved
    finally:
        proc.kill()
        proc.wait()


def test_watchdog_kills_marked_escapees_when_the_supervisor_dies(tmp_path):
    supervisor = r'''
import os, sys, time
from etcdvisor.process.child import ChildProcess
from etcdvisor.process.spawn import ChildSpec, spawn
from etcdvisor.process.watchdog import Watchdog
watchdog = Watchdog(); watchdog.start()
spec = ChildSpec(name="h", argv=(sys.executable, "-S", "-c", sys.argv[1], sys.argv[2], "stay"),
                 env=dict(os.environ))
child = ChildProcess(spec, watchdog=watchdog); child.start(time.monotonic())
print(child.pid, watchdog.pid, flush=True)
time.sleep(60)
'''
    prefix = tmp_path / "wd-daemon"
    proc = subprocess.Popen([sys.executable, "-c", supervisor, HOSTILE, str(prefix)],
                            stdout=subprocess.PIPE)
    leader, helper = map(int, proc.stdout.readline().split())
    daemon = _daemon(tmp_path, prefix)
    try:
        assert os.getpgid(daemon) != leader
        proc.kill()
        proc.wait()
        _wait(lambda: not _live(leader) and not _live(daemon), 5, "leader and daemon killed")
        _wait(lambda: not _live(helper), 5, "the helper to exit")
    finally:
        _kill(leader, daemon, helper)


def test_watchdog_helper_imports_only_the_stdlib_it_uses():
    argv = helper_argv()
    assert argv[1:] == ["-I", "-S", HELPER_SCRIPT, "etcdvisor.process.watchdog_main"]
    result = subprocess.run([argv[0], "-X", "importtime", *argv[1:]], check=False, stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    modules = {line.rsplit("|", 1)[1].strip() for line in result.stderr.splitlines()
               if line.startswith("import time:") and "|" in line}
    modules.discard("imported package")
    assert not {m for m in modules if m.split(".")[0] in (
        "etcdvisor", "psutil", "subprocess", "threading", "site", "ctypes")}, modules
    assert "select" in modules or "select" in sys.builtin_module_names


def test_cgroup_leaf_holds_the_tree_and_is_reused(tmp_path):
    pool = CgroupPool.create()
    if pool is None:
        # No writable cgroup v2 here: the documented fallback is the marker alone.
        own = cgroup_mod.own_cgroup_dir()
        assert own is None or not os.access(own, os.W_OK) or os.environ.get(cgroup_mod.DISABLE_ENV)
        return
    proc = subprocess.Popen([sys.executable, "-S", "-c", "import time; time.sleep(30)"])
    try:
        att = pool.attach(proc.pid)
        _wait(lambda: att.state is not AttachState.PENDING and att.state is not AttachState.WRITING,
              10, "the cgroup thread")
        assert att.state is AttachState.ATTACHED and pool.pids(att) == [proc.pid]
        pool.kill(att)
        assert proc.wait(5) == -signal.SIGKILL
        assert pool.settle(att)
        pool.release(att)
        _wait(lambda: pool._free == [att.path], 5, "the leaf back in the pool")
        late = pool.attach(os.getpid() + 10**7)  # no such pid: the move fails cleanly
        _wait(lambda: late.state is AttachState.FAILED, 10, "a failed move")
    finally:
        proc.kill()
        proc.wait()
        pool.close()
    assert not os.path.exists(pool.base)


def test_settle_cancels_a_pending_move_so_the_pid_can_be_reaped():
    pool = CgroupPool.__new__(CgroupPool)  # no thread: the move never starts
    att = cgroup_mod.Attachment(12345)
    assert pool.settle(att) and att.state is AttachState.CANCELLED
    writing = cgroup_mod.Attachment(12346)
    writing.state = AttachState.WRITING
    assert not pool.settle(writing)  # the thread is moving it: do not reap yet


@pytest.mark.parametrize("garbage", ["R 1 15 - - tag extra more", "R x", "B", "Z 1", "E 1 x -",
                                     "R -3 15 - -", "R 0 15 - -", "P", "P t x - -", "X"])
def test_watchdog_helper_survives_garbage_commands(garbage):
    helper = subprocess.Popen(helper_argv(), stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    helper.stdin.write((garbage + "\nQ\n").encode())
    helper.stdin.close()
    assert helper.wait(10) == 0


def test_watchdog_client_sends_the_cgroup_base_and_tags():
    watchdog = Watchdog()
    watchdog._cgroup_base = "/sys/fs/cgroup/x y"
    watchdog._table[7] = (None, None, 15, "abc")
    assert watchdog._replay() == "B /sys/fs/cgroup/x y\nR 7 15 - - abc\n"


def test_watchdog_helper_gets_no_environment(monkeypatch):
    monkeypatch.setenv("SOME_PASSWORD", "hunter2")
    watchdog = Watchdog()
    watchdog.start()
    try:
        with open(f"/proc/{watchdog.pid}/environ", "rb") as fh:
            assert b"hunter2" not in fh.read()
    finally:
        watchdog.stop()


@pytest.mark.slow  # seconds of real time: left out of the fast part (-m "not slow")
def test_watchdog_deadline_kills_marked_escapees_of_a_frozen_supervisor(tmp_path):
    # the supervisor stays alive but never acts (as if SIGSTOPped): kill_at passes
    supervisor = r'''
import os, sys, time
from etcdvisor.process.child import ChildProcess
from etcdvisor.process.spawn import ChildSpec, spawn
from etcdvisor.process.watchdog import Watchdog
watchdog = Watchdog(); watchdog.start()
spec = ChildSpec(name="h", argv=(sys.executable, "-S", "-c", sys.argv[1], sys.argv[2], "stay"),
                 env=dict(os.environ), lease_bound=True)
child = ChildProcess(spec, watchdog=watchdog)
now = time.monotonic()
child.set_lease_deadlines(now + 1.0, now + 1.5, sync_watchdog=False)
child.start(now)
print(child.pid, watchdog.pid, flush=True)
time.sleep(60)
'''
    prefix = tmp_path / "frozen-daemon"
    proc = subprocess.Popen([sys.executable, "-c", supervisor, HOSTILE, str(prefix)],
                            stdout=subprocess.PIPE)
    leader, helper = map(int, proc.stdout.readline().split())
    daemon = _daemon(tmp_path, prefix)
    try:
        _wait(lambda: not _live(leader) and not _live(daemon), 10, "the helper's kill_at")
        assert proc.poll() is None  # the supervisor did nothing: the helper did it all
    finally:
        proc.kill()
        proc.wait()
        _kill(leader, helper, daemon)


def test_fork_path_child_moves_itself_into_its_leaf_before_exec():
    """A lease-bound child forks a daemon at once: the daemon starts inside the child's
    leaf although the pool's thread never moved anything (no attach call)."""
    pool = CgroupPool.create()
    if pool is None:
        own = cgroup_mod.own_cgroup_dir()
        assert own is None or not os.access(own, os.W_OK) or os.environ.get(cgroup_mod.DISABLE_ENV)
        return
    script = "import os, sys\npid = os.fork()\nif pid == 0:\n    import time; time.sleep(30)\n" \
             "print(pid, flush=True)\nimport time; time.sleep(30)\n"
    leaf = pool.reserve()
    assert leaf is not None
    spec = ChildSpec("early-fork", (sys.executable, "-S", "-c", script), dict(os.environ))
    proc = spawn(spec, parent_death=True, cgroup_procs=os.path.join(leaf, "cgroup.procs"))
    try:
        grandchild = int(proc.stdout.readline())
        assert sorted(cgroup_mod._read_pids(leaf)) == sorted([proc.pid, grandchild])
    finally:
        for pid in cgroup_mod._read_pids(leaf):
            os.kill(pid, signal.SIGKILL)
        proc.wait()
        pool.unreserve(leaf)
        _wait(lambda: not cgroup_mod._read_pids(leaf), 5, "the leaf to empty")
        pool.close()
