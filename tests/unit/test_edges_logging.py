"""Log lines an operator relies on (issue 19, section 1: items 1, 2, 6, 9)."""

from __future__ import annotations

import logging

from etcdvisor.coord.memory import FakeClock
from etcdvisor.coord.session import SessionEvent, SessionEventKind
from etcdvisor.runtime.store_health import StoreHealth


def _event(kind, detail=""):
    return SessionEvent(kind, 0xAB, 10, 0.0, detail)


def test_etcd_unreachable_is_said_once_per_backoff_step_not_per_attempt(caplog):
    clock = FakeClock()
    health = StoreHealth("http://127.0.0.1:2379", 1.0, clock=clock, wall=lambda: 0.0)
    caplog.set_level(logging.INFO, logger="etcdvisor")
    for second in range(120):  # a failed keepalive every second for two minutes
        health.on_session(_event(SessionEventKind.ERROR, "Connection refused"), clock())
        if second == 10:
            health.on_session(_event(SessionEventKind.EXPIRED), clock())
        health.tick(clock(), 10.0 - second if second < 10 else None)
        clock.advance(1.0)
    lines = [r.getMessage() for r in caplog.records if "unreachable since" in r.getMessage()]
    assert 6 <= len(lines) <= 9, lines  # at 1, 2, 4, 8, 16, 32, 64, 124... seconds
    assert lines[0].startswith("etcd at http://127.0.0.1:2379 unreachable since 00:00:00Z; "
                               "lease-bound children stop at lease expiry (in 9s); retrying every 1s")
    assert "; children stopped at lease expiry; retrying every 1s (Connection refused)" in lines[-1]
    health.on_session(_event(SessionEventKind.KEEPALIVE), clock())
    assert "etcd at http://127.0.0.1:2379 reachable again after 120.0s" in caplog.records[-1].getMessage()
    assert health.next_deadline() is None


def test_a_single_failed_keepalive_says_nothing(caplog):
    clock = FakeClock()
    health = StoreHealth("http://e:2379", 1.0, clock=clock)
    caplog.set_level(logging.INFO, logger="etcdvisor")
    health.on_session(_event(SessionEventKind.ERROR, "timeout"), clock())
    clock.advance(0.5)
    health.tick(clock(), 5.0)
    health.on_session(_event(SessionEventKind.KEEPALIVE), clock())
    clock.advance(5)
    health.tick(clock(), 5.0)
    assert not caplog.records
