"""Lease keepalives on one long-lived stream per connection (coord/etcd/keepalive.py),
against a real etcd: answers, a revoked lease, a frozen server, a restart, close."""

from __future__ import annotations

import threading
import time

import pytest

from etcdvisor.coord import open_backend
from etcdvisor.coord.errors import Closed, CoordTimeout, Unavailable


def _threads(name: str) -> int:
    return sum(1 for t in threading.enumerate() if t.name == name)


def test_keepalives_share_one_stream_and_report_the_ttl(etcd_url):
    backend = open_backend(etcd_url, timeout=5)
    try:
        lease = backend.lease_grant(30)
        before = threading.active_count()
        for _ in range(20):
            assert 25 <= backend.lease_keepalive(lease.id, timeout=5) <= 30
        # one reader thread for the stream, not one request thread per keepalive
        assert _threads("etcd-keepalive-read") <= 1
        assert threading.active_count() <= before + 3
        backend.lease_revoke(lease.id)
        assert backend.lease_keepalive(lease.id, timeout=5) == 0  # gone: 0, not an error
        other = backend.lease_grant(30)  # the same stream serves another lease
        assert backend.lease_keepalive(other.id, timeout=5) > 0
    finally:
        backend.close()


def test_a_frozen_server_times_out_then_the_stream_recovers(private_etcd):
    backend = open_backend(private_etcd.url, timeout=5)
    try:
        lease = backend.lease_grant(60)
        assert backend.lease_keepalive(lease.id, timeout=5) > 0
        private_etcd.pause()
        try:
            started = time.monotonic()
            with pytest.raises((CoordTimeout, Unavailable)):
                backend.lease_keepalive(lease.id, timeout=0.5)
            assert time.monotonic() - started < 3
        finally:
            private_etcd.resume()
        # the late answer to the timed-out request must not be taken for a new one:
        # the stream was torn down, the next refresh opens a fresh one
        deadline = time.monotonic() + 20
        while True:
            try:
                assert backend.lease_keepalive(lease.id, timeout=5) > 0
                break
            except (CoordTimeout, Unavailable):
                assert time.monotonic() < deadline, "keepalive never recovered after resume"
                time.sleep(0.2)
    finally:
        backend.close()


def test_keepalive_recovers_after_an_etcd_restart(private_etcd):
    backend = open_backend(private_etcd.url, timeout=5)
    try:
        lease = backend.lease_grant(60)
        assert backend.lease_keepalive(lease.id, timeout=5) > 0
        private_etcd.restart()
        deadline, answers = time.monotonic() + 30, []
        while time.monotonic() < deadline and not answers:
            try:
                answers.append(backend.lease_keepalive(lease.id, timeout=2))
            except (CoordTimeout, Unavailable):
                time.sleep(0.2)
        assert answers and answers[0] > 0  # the lease survived the restart (persisted)
    finally:
        backend.close()


def test_close_is_prompt_and_final(etcd_url):
    backend = open_backend(etcd_url, timeout=5)
    lease = backend.lease_grant(30)
    backend.lease_keepalive(lease.id, timeout=5)
    started = time.monotonic()
    backend.close()
    assert time.monotonic() - started < 2
    with pytest.raises(Closed):
        backend.lease_keepalive(lease.id, timeout=1)
    deadline = time.monotonic() + 5
    while _threads("etcd-keepalive-read") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _threads("etcd-keepalive-read") == 0  # nothing left behind
