"""A 3-member etcd cluster: the client moves to another endpoint when the one
it uses dies, a session keeps its lease through it, and a watch resumes."""

import queue

import pytest

from etcdvisor.coord import CoordError, open_backend
from etcdvisor.coord.session import Session
from etcdvisor.coord.watcher import PrefixWatcher
from etcdvisor.testing import wait_for

pytestmark = pytest.mark.slow


def test_member_loss_is_survived_through_the_other_endpoints(etcd_cluster, etcd_prefix):
    cluster = etcd_cluster(3)
    backend = open_backend(cluster.url, timeout=2)
    session = Session(backend, ttl=5, interval=0.3).start()
    backend.put(etcd_prefix + "member", "x", lease=session.lease_id)
    changes = queue.Queue()
    watcher = PrefixWatcher(backend, etcd_prefix + "w/", changes.put, retry_interval=0.1).start(wait=5)
    assert changes.get(timeout=5).initial

    current = backend._conn().endpoint  # the endpoint in use right now
    victim = next(m for m in cluster.members if m.client_port == current.port)
    victim.kill()

    def write_works():
        try:
            backend.put(etcd_prefix + "w/after", "1")
            return True
        except CoordError:
            return False
    wait_for(write_works, 15, "a write through another endpoint")
    assert backend._conn().endpoint.port != victim.client_port
    change = changes.get(timeout=15)
    assert etcd_prefix + "w/after" in change.snapshot
    # a keepalive sent after the failover came back: the session lives on through the others
    assert session.confirm(after=session.clock(), timeout=10), "no keepalive confirmed after the member loss"
    other = open_backend(",".join(m.url for m in cluster.members if m is not victim))
    assert other.get(etcd_prefix + "member") is not None, "the session lost its lease"
    assert session.alive
    watcher.stop()
    session.close()
    assert other.get(etcd_prefix + "member") is None
    other.close()
    backend.close()
