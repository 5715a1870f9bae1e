"""pytest plugin: real etcd servers as fixtures (see :mod:`etcdvisor.testing`)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from .server import EtcdCluster, EtcdNotFound, EtcdServer, find_etcd_binary


def _binary() -> str:
    try:
        return find_etcd_binary()
    except EtcdNotFound as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def etcd_server() -> Iterator[EtcdServer]:
    """One etcd server shared by the whole session."""
    server = EtcdServer(name="etcd-session", binary=_binary())
    server.start()
    yield server
    server.cleanup()


@pytest.fixture
def etcd_url(etcd_server: EtcdServer) -> str:
    return etcd_server.url


@pytest.fixture
def etcd_prefix() -> str:
    """A key prefix unique to this test: every test works under its own."""
    return f"/test-{uuid.uuid4().hex[:12]}/"


@pytest.fixture
def private_etcd() -> Iterator[EtcdServer]:
    """An etcd server owned by this test (free to stop, pause, restart)."""
    server = EtcdServer(name="etcd-private", binary=_binary())
    server.start()
    yield server
    server.cleanup()


@pytest.fixture
def etcd_cluster() -> Iterator[Callable[..., EtcdCluster]]:
    """Factory: ``etcd_cluster(size=3)`` starts a cluster, cleaned up after."""
    started: list[EtcdCluster] = []

    def start(size: int = 3) -> EtcdCluster:
        cluster = EtcdCluster(size=size, binary=_binary())
        started.append(cluster)
        return cluster.start()

    yield start
    for cluster in started:
        cluster.cleanup()
