"""ChildProcess: group kill, escaped descendants, SIGKILL escalation, lease deadlines."""

import os
import signal
import sys
import time

import psutil
import pytest

from etcdvisor.process.child import ChildProcess, ChildState
from etcdvisor.process.spawn import ChildSpec

# A child that starts a grandchild (optionally in a new session, optionally ignoring
# SIGTERM), records its pid in a file, optionally ignores SIGTERM itself, then sleeps.
_PARENT = """
import os, signal, subprocess, sys, time
escape, ignore_term, pidfile = sys.argv[1] == "1", sys.argv[2] == "1", sys.argv[3]
stubborn = sys.argv[4] == "1"
code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN)" if stubborn else "import time"
grandchild = subprocess.Popen([sys.executable, "-c", code + "; time.sleep(60)"],
                              start_new_session=escape)
if ignore_term:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
with open(pidfile + ".tmp", "w") as f:
    f.write(str(grandchild.pid))
os.rename(pidfile + ".tmp", pidfile)
time.sleep(60)
"""


def _spec(*argv, **kwargs):
    kwargs.setdefault("stop_timeout", 5.0)
    return ChildSpec(name="worker[1]", argv=argv, env=dict(os.environ), **kwargs)


def _start_family(tmp_path, escape=False, ignore_term=False, stubborn=False, **kwargs):
    pidfile = tmp_path / "grandchild.pid"
    child = ChildProcess(_spec(sys.executable, "-c", _PARENT, str(int(escape)),
                               str(int(ignore_term)), str(pidfile), str(int(stubborn)),
                               **kwargs))
    child.start(time.monotonic())
    deadline = time.monotonic() + 5
    while not pidfile.exists():
        assert time.monotonic() < deadline, "grandchild did not start"
        time.sleep(0.02)
    return child, int(pidfile.read_text())


def _dead(pid):
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait_exit(child, timeout=4.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code = child.poll(time.monotonic())
        if code is not None:
            return code
        time.sleep(0.02)
    child.kill()
    raise AssertionError(f"{child} did not exit in {timeout}s")


def _wait_dead(pid, timeout=3.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not _dead(pid):
        time.sleep(0.02)
    return _dead(pid)


def _cleanup(*pids):
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def test_stop_signals_the_whole_group_including_a_grandchild(tmp_path):
    child, grandchild = _start_family(tmp_path)
    try:
        assert child.state is ChildState.RUNNING and child.pgid == child.pid
        assert os.getpgid(grandchild) == child.pgid
        child.stop(time.monotonic())
        assert child.state is ChildState.STOPPING
        assert _wait_exit(child) == -signal.SIGTERM
        assert child.state is ChildState.EXITED and child.stop_requested
        assert _wait_dead(grandchild)
    finally:
        _cleanup(child.pid, grandchild)


def test_kill_finds_a_descendant_that_escaped_with_setsid(tmp_path):
    child, escaped = _start_family(tmp_path, escape=True)
    try:
        assert os.getpgid(escaped) != child.pgid
        child.kill()
        assert child.state is ChildState.KILLED
        assert _wait_exit(child) == -signal.SIGKILL
        assert _wait_dead(escaped)
    finally:
        _cleanup(child.pid, escaped)


def test_escaped_descendant_seen_at_stop_dies_with_a_graceful_leader(tmp_path):
    child, escaped = _start_family(tmp_path, escape=True, stubborn=True)
    try:
        time.sleep(0.3)  # let the grandchild install its SIG_IGN (only SIGKILL can end it)
        child.stop(time.monotonic())
        assert _wait_exit(child) == -signal.SIGTERM
        assert _wait_dead(escaped)
    finally:
        _cleanup(child.pid, escaped)


def test_child_ignoring_the_stop_signal_is_killed_after_stop_timeout(tmp_path):
    child, grandchild = _start_family(tmp_path, ignore_term=True, stop_timeout=0.5)
    try:
        stop_at = time.monotonic()
        child.stop(stop_at)
        assert child.next_deadline() == stop_at + 0.5
        time.sleep(0.2)
        assert child.poll(time.monotonic()) is None  # still ignoring SIGTERM
        assert _wait_exit(child) == -signal.SIGKILL
        assert time.monotonic() - stop_at >= 0.45
        assert _wait_dead(grandchild)
    finally:
        _cleanup(child.pid, grandchild)


def test_exit_status_is_reported_not_stolen_and_leftovers_are_killed(tmp_path):
    code = ("import os, subprocess, sys\n"
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
            "open(sys.argv[1] + '.tmp', 'w').write(str(p.pid))\n"
            "os.rename(sys.argv[1] + '.tmp', sys.argv[1])\n"
            "sys.exit(3)\n")
    pidfile = tmp_path / "leftover.pid"
    child = ChildProcess(_spec(sys.executable, "-c", code, str(pidfile)))
    child.start()
    leftover = None
    try:
        assert _wait_exit(child) == 3
        leftover = int(pidfile.read_text())
        assert child.returncode == 3 and not child.stop_requested
        assert _wait_dead(leftover)
    finally:
        _cleanup(child.pid, *([leftover] if leftover else []))


def test_lease_deadlines_stop_then_kill_a_lease_bound_child(tmp_path):
    child, grandchild = _start_family(tmp_path, ignore_term=True, stop_timeout=30.0,
                                      lease_bound=True)
    try:
        now = time.monotonic()
        child.set_lease_deadlines(now + 0.2, now + 0.8)
        assert child.next_deadline() == now + 0.2
        assert _wait_exit(child) == -signal.SIGKILL  # well before stop_timeout=30
        assert time.monotonic() - now < 5
        assert child.stop_requested
    finally:
        _cleanup(child.pid, grandchild)


def test_lease_deadlines_are_ignored_for_children_not_lease_bound():
    child = ChildProcess(_spec(sys.executable, "-c", "import time; time.sleep(30)"))
    child.start()
    try:
        child.set_lease_deadlines(0.0, 0.0)
        assert child.poll(time.monotonic()) is None
        assert child.state is ChildState.RUNNING
    finally:
        child.kill()
        _wait_exit(child)


@pytest.mark.slow  # seconds of real time: left out of the fast part (-m "not slow")
def test_grandchildren_get_the_grace_period_after_the_leader_exits(tmp_path):
    """docs/safety.md, rule 4: stop signal, grace period, then SIGKILL -- also for the
    rest of the group when the group leader (a shell) dies at once."""
    import os
    import sys
    import time

    from etcdvisor.process.child import ChildProcess
    from etcdvisor.process.spawn import ChildSpec

    rec = tmp_path / "rec"
    code = ("import signal, sys, time\n"
            "def h(*a):\n"
            f"    time.sleep(0.5); open({str(rec)!r}, 'a').write('graceful'); sys.exit(0)\n"
            "signal.signal(signal.SIGTERM, h)\n"
            "time.sleep(100)")
    spec = ChildSpec(name="t", argv=("sh", "-c", f'{sys.executable} -c "$CODE" & sleep 0.5; exec sleep 100'),
                     env={**os.environ, "CODE": code}, stop_timeout=5)
    child = ChildProcess(spec)
    child.start()
    time.sleep(1.0)
    child.stop(time.monotonic())
    deadline = time.monotonic() + 8
    while child.poll(time.monotonic()) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert child.returncode is not None
    assert rec.read_text() == "graceful"


def test_a_stopped_child_gets_its_stop_signal_continued(tmp_path):
    """A hung child that SIGSTOPped itself runs its stop handler (SIGCONT follows the
    stop signal, as systemd does) instead of waiting for SIGKILL."""
    code = ("import os, signal, sys\n"
            "signal.signal(signal.SIGTERM, lambda *_: sys.exit(7))\n"
            "os.kill(os.getpid(), signal.SIGSTOP)\n"
            "signal.pause()\n")
    child = ChildProcess(_spec(sys.executable, "-c", code, stop_timeout=10.0))
    pid = child.start(time.monotonic())
    deadline = time.monotonic() + 5
    while psutil.Process(pid).status() != psutil.STATUS_STOPPED:
        assert time.monotonic() < deadline, "the child did not stop itself"
        time.sleep(0.01)
    child.stop(time.monotonic())
    deadline = time.monotonic() + 3
    while child.poll(time.monotonic()) is None:
        assert time.monotonic() < deadline, "the stopped child did not act on its stop signal"
        time.sleep(0.01)
    assert child.returncode == 7
