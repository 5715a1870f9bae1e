"""Test against a real etcd with one fixture.

Installing etcdvisor registers a pytest plugin (``etcdvisor.testing.plugin``)
with these fixtures:

* ``etcd_server`` (session): a real etcd on free loopback ports, temp data dir
* ``etcd_url``: its client URL
* ``etcd_prefix``: a random key prefix for this test (nothing wipes the keyspace)
* ``private_etcd``: a server of this test's own, to stop/pause/restart freely
* ``etcd_cluster``: a factory starting an N-member cluster (default 3)

The servers themselves are :class:`EtcdServer` and :class:`EtcdCluster`,
usable outside pytest too.
"""

import time
from collections.abc import Callable
from typing import TypeVar

from .server import EtcdCluster, EtcdNotFound, EtcdServer, find_etcd_binary, free_port

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float = 5.0, message: str = "condition",
             interval: float = 0.02, *, on_timeout: Callable[[], str] | None = None) -> T:
    """Poll ``predicate`` until it returns a true value and return that value;
    raise ``AssertionError`` (a test failure) after ``timeout`` seconds, with what
    ``on_timeout`` returns then (a member's output, say) appended."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            detail = f"\n{on_timeout()}" if on_timeout is not None else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {message}{detail}")
        time.sleep(interval)


__all__ = ["EtcdCluster", "EtcdNotFound", "EtcdServer", "find_etcd_binary", "free_port", "wait_for"]
