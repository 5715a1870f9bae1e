"""Slot: restart policies, backoff growth and reset, crash loop, spawn failures, desires."""

import os
import sys
import time

import pytest

from etcdvisor.process.backoff import RestartBackoff
from etcdvisor.process.slot import Exited, Failed, Slot, SlotState, SpawnFailed, Started, Stopped
from etcdvisor.process.spawn import ChildSpec

SLEEP = "import time; time.sleep(30)"


def _spec(code, *args, name="worker[2]", **kwargs):
    kwargs.setdefault("stop_timeout", 3.0)
    return ChildSpec(name=name, argv=(sys.executable, "-c", code, *args),
                     env=dict(os.environ), **kwargs)


def _drive(slot, until, timeout=4.5):
    """Tick like the decision loop would until ``until(events)``; return (now, event) pairs."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = time.monotonic()
        seen.extend((now, event) for event in slot.tick(now))
        if until([event for _, event in seen]):
            return seen
        wake = slot.next_deadline()
        time.sleep(0.01 if wake is None else min(0.02, max(0.0, wake - time.monotonic())))
    raise AssertionError(f"timed out; events so far: {[e for _, e in seen]}")


def _count(kind, n):
    return lambda events: sum(isinstance(e, kind) for e in events) >= n


def _stop(slot):
    slot.set_desired(None)
    _drive(slot, lambda events: slot.idle)


def test_backoff_grows_between_quick_crashes():
    slot = Slot(_spec("raise SystemExit(1)"), "always", RestartBackoff(initial=0.1, maximum=1.0),
                start_retries=10, rand=lambda: 0.5)
    seen = _drive(slot, _count(Exited, 4))
    delays = [round(e.restart_at - now, 6) for now, e in seen if isinstance(e, Exited)]
    assert delays == [0.1, 0.2, 0.4, 0.8]
    assert all(e.code == 1 for _, e in seen if isinstance(e, Exited))
    assert slot.restarts == 3 and slot.last_exit == 1
    _stop(slot)


@pytest.mark.slow  # seconds of real time: left out of the fast part (-m "not slow")
def test_backoff_resets_after_the_child_stayed_up(tmp_path):
    # Runs 1 and 2 crash at once, run 3 stays up longer than reset_after, then crashes.
    code = ("import os, sys, time\n"
            "counter = sys.argv[1]\n"
            "n = int(open(counter).read()) if os.path.exists(counter) else 0\n"
            "open(counter, 'w').write(str(n + 1))\n"
            "time.sleep(1.6 if n == 2 else 0)\n"
            "sys.exit(1)\n")
    slot = Slot(_spec(code, str(tmp_path / "n")), "always",
                RestartBackoff(initial=0.1, maximum=1.0, reset_after=1.0), start_retries=2,
                rand=lambda: 0.5)
    seen = _drive(slot, _count(Exited, 4))
    delays = [round(e.restart_at - now, 6) for now, e in seen if isinstance(e, Exited)]
    assert delays == [0.1, 0.2, 0.0, 0.1]  # the good run reset the count and the delay
    assert slot.state is not SlotState.FAILED  # 2 quick exits, a good run, 1 quick exit
    _stop(slot)


def test_crash_loop_marks_the_slot_failed_and_stops_restarting():
    received = []
    slot = Slot(_spec("raise SystemExit(2)"), "always", RestartBackoff(initial=0.05),
                start_retries=2, on_event=received.append, name="worker/2")  # the manager's key path
    seen = _drive(slot, _count(Failed, 1))
    events = [e for _, e in seen]
    assert [type(e) for e in events] == [Started, Exited, Started, Exited, Started, Exited,
                                         Failed]
    assert events[-2].restart_at is None
    assert "3 times in a row" in events[-1].reason
    # one name per child (issue 19, 1.3): the reason names the child, not the slot's key path
    assert events[-1].reason.startswith("worker[2]: ") and slot.child_name == "worker[2]"
    assert slot.state is SlotState.FAILED and slot.next_deadline() is None
    assert received == events  # on_event sees the same events, in order
    time.sleep(0.2)
    assert slot.tick(time.monotonic()) == []


def test_missing_command_fails_at_once_without_a_crash_loop():
    spec = ChildSpec(name="worker[0]", argv=("pyhton",), env={"PATH": "/usr/bin:/bin"})
    slot = Slot(spec, "always", start_retries=5)
    events = slot.tick(time.monotonic())
    assert [type(e) for e in events] == [SpawnFailed, Failed]
    assert events[0].message.startswith("worker[0]: command not found: 'pyhton'")
    assert "\n" not in events[0].message
    assert slot.state is SlotState.FAILED and slot.next_deadline() is None
    assert slot.tick(time.monotonic()) == []


def test_one_shot_reports_completion_and_can_run_again():
    slot = Slot(_spec("raise SystemExit(7)"), "never")
    seen = _drive(slot, _count(Exited, 1))
    exited = seen[-1][1]
    assert exited.code == 7 and exited.restart_at is None
    assert slot.state is SlotState.EXITED and slot.idle and slot.next_deadline() is None
    spec = slot.desired
    slot.set_desired(None)
    slot.set_desired(spec)  # same spec again, even before a tick: a fresh run
    _drive(slot, _count(Exited, 1))
    assert slot.state is SlotState.EXITED


def test_on_failure_does_not_restart_a_clean_exit():
    slot = Slot(_spec("pass"), "on-failure")
    _drive(slot, _count(Exited, 1))
    assert slot.state is SlotState.EXITED and slot.last_exit == 0


def test_new_spec_restarts_same_spec_does_nothing_none_stops():
    slot = Slot(_spec(SLEEP), "always")
    first = _drive(slot, _count(Started, 1))[-1][1]
    slot.set_desired(_spec(SLEEP))  # equal spec: no change
    assert slot.tick(time.monotonic()) == [] and slot.child.pid == first.pid
    slot.set_desired(_spec(SLEEP, "--new"))
    seen = _drive(slot, _count(Started, 1))
    assert [type(e) for _, e in seen] == [Stopped, Started]
    assert seen[-1][1].pid != first.pid and slot.restarts == 0
    slot.set_desired(None)
    seen = _drive(slot, _count(Stopped, 1))
    assert slot.state is SlotState.STOPPED and slot.child is None


def test_lease_term_stops_a_lease_bound_child_and_holds_restarts():
    slot = Slot(_spec(SLEEP, lease_bound=True), "always")
    _drive(slot, _count(Started, 1))
    now = time.monotonic()
    slot.set_lease_deadlines(now + 0.1, now + 2.0)
    _drive(slot, _count(Stopped, 1))
    assert slot.state is SlotState.STOPPED
    time.sleep(0.1)
    assert slot.tick(time.monotonic()) == []  # term passed: no restart
    assert slot.next_deadline() is None
    now = time.monotonic()
    slot.set_lease_deadlines(now + 30, now + 35)  # keepalive came back: may start again
    _drive(slot, _count(Started, 1))
    _stop(slot)


def test_no_lease_bound_start_past_start_by_even_before_the_term():
    """A link slower than the config tolerates: the deadline would stop the child
    before the next keepalive could move it, so it is not started at all (no
    start/stop flapping every second)."""
    slot = Slot(_spec(SLEEP, lease_bound=True), "always")
    now = time.monotonic()
    slot.set_lease_deadlines(now + 30, now + 35, start_by=now - 0.01)
    assert slot.tick(time.monotonic()) == []  # term still ahead, start_by passed
    assert slot.state is SlotState.STOPPED and slot.next_deadline() is None
    now = time.monotonic()
    slot.set_lease_deadlines(now + 30, now + 35, start_by=now + 29)  # a fresh confirmation
    _drive(slot, _count(Started, 1))
    now = time.monotonic()
    slot.set_lease_deadlines(now + 30, now + 35, start_by=now - 0.01)  # a running child keeps running
    assert slot.tick(time.monotonic()) == [] and slot.state is SlotState.RUNNING
    _stop(slot)


def test_a_failed_health_check_restarts_like_a_crash_and_ends_failed():
    """fail_child: stop_signal, then counted toward start_retries when the child was
    never healthy (quick), with the check as the Exited reason."""
    slot = Slot(_spec(SLEEP), "always", RestartBackoff(initial=0.05, maximum=0.1), start_retries=1,
                rand=lambda: 0.5)
    for _round in range(2):
        _drive(slot, lambda events: slot.child is not None and slot.state is SlotState.RUNNING)
        assert slot.fail_child(time.monotonic(), "startup", True)
        seen = _drive(slot, _count(Exited, 1))
        exited = [e for _, e in seen if isinstance(e, Exited)][0]
        assert exited.reason == "startup" and exited.code == -15
        assert not any(isinstance(e, Stopped) for _, e in seen)
    assert slot.state is SlotState.FAILED
    assert slot.restarts_by_reason == {"startup": 1}


def test_a_healthy_child_that_fails_liveness_restarts_at_once_and_requested_restarts_carry_a_reason():
    slot = Slot(_spec(SLEEP), "always", RestartBackoff(initial=5.0, maximum=10.0), start_retries=0)
    _drive(slot, _count(Started, 1))
    assert slot.fail_child(time.monotonic(), "liveness", False)
    seen = _drive(slot, _count(Started, 1))
    exited = [e for _, e in seen if isinstance(e, Exited)][0]
    assert exited.reason == "liveness" and exited.restart_at - seen[0][0] < 0.5  # no backoff
    assert slot.restart_child(time.monotonic(), "rollout")
    seen = _drive(slot, _count(Started, 1))
    assert [e.reason for _, e in seen if isinstance(e, Started)] == ["rollout"]
    assert any(isinstance(e, Stopped) for _, e in seen)  # a requested restart is not a crash
    assert slot.restarts_by_reason == {"liveness": 1, "rollout": 1}
    _stop(slot)


def test_only_a_noted_spec_change_counts_as_a_config_restart():
    slot = Slot(_spec(SLEEP), "always", RestartBackoff(initial=0.05), start_retries=0)
    _drive(slot, _count(Started, 1))
    slot.set_desired(_spec(SLEEP, "new-index"))  # a new assignment: not a restart
    seen = _drive(slot, _count(Started, 1))
    assert [e.reason for _, e in seen if isinstance(e, Started)] == [None]
    slot.note_restart_reason("config")
    slot.set_desired(_spec(SLEEP, "new-config"))
    seen = _drive(slot, _count(Started, 1))
    assert [e.reason for _, e in seen if isinstance(e, Started)] == ["config"]
    assert slot.restarts_by_reason == {"config": 1}
    _stop(slot)
