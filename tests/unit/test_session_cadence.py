"""The session's keepalive cadence under slow replies (docs/safety.md rule 1):
sends go out every interval measured from send times, several in flight, and
``last_alive_sent`` never ages past interval + round trip + allowance."""

from __future__ import annotations

import threading
import time

import pytest

from etcdvisor.coord import open_backend
from etcdvisor.coord.session import Session, SessionEventKind


class SlowKeepalives:
    """Wraps a backend: each keepalive takes ``delay`` seconds to answer."""

    def __init__(self, backend, delay: float):
        self._backend = backend
        self.delay = delay
        self.sends: list[float] = []
        self._lock = threading.Lock()

    def __getattr__(self, name):
        return getattr(self._backend, name)

    def lease_keepalive(self, lease_id, timeout=None):
        with self._lock:
            self.sends.append(time.monotonic())
        if timeout is not None and self.delay >= timeout:
            time.sleep(timeout)
            from etcdvisor.coord.errors import CoordTimeout
            raise CoordTimeout("keepalive: timed out")
        time.sleep(self.delay)
        return self._backend.lease_keepalive(lease_id, timeout=timeout)


@pytest.mark.slow  # seconds of real time: left out of the fast part (-m "not slow")
def test_slow_replies_do_not_delay_the_next_send():
    backend = SlowKeepalives(open_backend("memory://cadence-slow"), delay=0.5)
    session = Session(backend, ttl=4, interval=0.2, name="slow").start()
    ages: list[float] = []
    try:
        started = time.monotonic()
        while time.monotonic() < started + 3.0:
            time.sleep(0.05)
            if time.monotonic() > started + 1.0:  # past the first replies
                ages.append(time.monotonic() - session.last_alive_sent)
    finally:
        session.close()
    gaps = [b - a for a, b in zip(backend.sends, backend.sends[1:])]
    assert len(backend.sends) >= 12, backend.sends  # ~15 sends in 3 s, not ~4 (one per reply)
    assert max(gaps) < 0.2 + 0.15, gaps  # cadence from sends, replies take 0.5 s
    assert session.skipped_sends == 0
    # the newest confirmed send is never older than interval + round trip (+ scheduling)
    assert max(ages) < 0.2 + 0.5 + 0.25, max(ages)


@pytest.mark.slow  # seconds of real time: left out of the fast part (-m "not slow")
def test_replies_slower_than_the_timeout_expire_the_session():
    backend = SlowKeepalives(open_backend("memory://cadence-dead"), delay=10.0)
    session = Session(backend, ttl=2, interval=0.2, keepalive_timeout=0.3, name="dead")
    seen = []
    session.add_listener(seen.append)
    session.start()
    try:
        time.sleep(2.6)
        assert session.state.value == "expired"
        assert any(e.kind is SessionEventKind.EXPIRED for e in seen)
        assert len(backend.sends) >= 8  # kept trying on the cadence while every call timed out
    finally:
        session.close(revoke=False)


def test_late_reply_of_an_older_send_does_not_move_t_k_back():
    backend = open_backend("memory://cadence-order")
    session = Session(backend, ttl=4, interval=5.0, name="order").start()
    try:
        t0 = time.monotonic()
        assert session.confirm(after=t0, timeout=2)
        newest = session.last_alive_sent
        # a reply to a keepalive sent before the newest confirmed one
        session.clock = lambda: newest - 1.0
        assert not session._keepalive_once(session.lease_id)
        assert session.last_alive_sent == newest
    finally:
        session.clock = time.monotonic
        session.close()
