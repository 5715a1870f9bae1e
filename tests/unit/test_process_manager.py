"""ProcessManager: slots share one output pump and the watchdog; parallel shutdown."""

import os
import sys
import threading
import time

import psutil

from etcdvisor.process.manager import ProcessManager
from etcdvisor.process.slot import SlotState, Started
from etcdvisor.process.spawn import ChildSpec

STUBBORN = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('stubborn up', flush=True); time.sleep(60)")
POLITE = "import time; print('polite up', flush=True); time.sleep(60)"


class Sink:
    def __init__(self):
        self.lock, self.data = threading.Lock(), b""

    def write(self, data):
        with self.lock:
            self.data += data

    def flush(self):
        pass


def _spec(name, code, **kwargs):
    return ChildSpec(name=name, argv=(sys.executable, "-c", code), env=dict(os.environ),
                     **kwargs)


def _tick_until(manager, predicate, timeout=4.0):
    deadline = time.monotonic() + timeout
    events = []
    while time.monotonic() < deadline:
        events += manager.tick(time.monotonic())
        if predicate(events):
            return events
        time.sleep(0.02)
    raise AssertionError(f"timed out; events: {events}")


def test_children_share_output_and_watchdog_and_stop_in_parallel():
    out = Sink()
    manager = ProcessManager(stdout=out, stderr=Sink())
    manager.start()
    try:
        stubborn = manager.new_slot(_spec("stubborn", STUBBORN, stop_timeout=1.0))
        polite = manager.new_slot(_spec("polite", POLITE, stop_timeout=1.0))
        assert manager.next_deadline() == 0.0  # new desires: tick now
        _tick_until(manager, lambda events: sum(isinstance(e, Started) for e in events) == 2)
        _tick_until(manager, lambda _: b"stubborn| stubborn up\n" in out.data
                    and b"polite| polite up\n" in out.data)
        helper = psutil.Process(manager.watchdog.pid)
        assert helper.is_running() and manager.next_deadline() is None  # idle: no wakeups
        started = time.monotonic()
        manager.stop_all(started)
        _tick_until(manager, lambda _: manager.all_stopped())
        elapsed = time.monotonic() - started
        assert 0.8 <= elapsed < 3.0  # both within one stop_timeout, not one after the other
        assert stubborn.last_exit == -9 and polite.last_exit == -15
        assert stubborn.state is polite.state is SlotState.STOPPED
    finally:
        manager.stop_all(time.monotonic())
        for slot in manager.slots:
            if slot.child is not None:
                slot.child.kill()
        _tick_until(manager, lambda _: manager.all_stopped())
        manager.close()


def test_lease_deadlines_reach_lease_bound_children_only():
    manager = ProcessManager(capture_output=False)
    manager.start()
    try:
        bound = manager.new_slot(_spec("bound", POLITE, lease_bound=True))
        free = manager.new_slot(_spec("free", POLITE))
        _tick_until(manager, lambda events: sum(isinstance(e, Started) for e in events) == 2)
        now = time.monotonic()
        manager.set_lease_deadlines(now + 0.2, now + 1.0)
        _tick_until(manager, lambda _: bound.child is None)
        assert bound.last_exit == -15 and free.child is not None
        assert bound.state is SlotState.STOPPED  # held until new deadlines
    finally:
        manager.stop_all(time.monotonic())
        _tick_until(manager, lambda _: manager.all_stopped())
        manager.close()


def test_starting_children_is_bounded_per_tick_and_the_rest_stay_due(monkeypatch):
    """A role of 1,024 children must not hold the loop for the seconds their forks take
    (keepalive confirmations wait meanwhile and the lease deadlines kill the children):
    one tick starts children for at most START_BUDGET (at least one), and leaves the
    others due at once."""
    from etcdvisor.process import manager as manager_module

    monkeypatch.setattr(manager_module, "START_BUDGET", 0.0, raising=False)
    manager = ProcessManager(capture_output=False, use_watchdog=False)
    manager.start()
    slots = [manager.new_slot(ChildSpec(name=f"c{i}", argv=("sleep", "60"), env=dict(os.environ),
                                        stop_timeout=1.0)) for i in range(3)]
    try:
        for count in (1, 2, 3):
            started = [e for e in manager.tick(time.monotonic()) if isinstance(e, Started)]
            assert len(started) == 1, started
            assert sum(slot.state is SlotState.RUNNING for slot in slots) == count
            assert (manager.next_deadline() == 0.0) is (count < 3)  # the others: tick again now
    finally:
        manager.stop_all(time.monotonic())
        _tick_until(manager, lambda _: manager.all_stopped())
        manager.close()
