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


def _start(name: str, attempts: int = 3) -> EtcdServer:
    """A started server on free ports. A port picked free can be taken by another process
    before etcd binds it (tests run beside each other): then etcd exits at once, and the
    server is started again on other ports."""
    for attempt in range(1, attempts + 1):
        server = EtcdServer(name=name, binary=_binary())
        try:
            return server.start()
        except RuntimeError:
            exited = server.proc is not None and server.proc.poll() is not None
            server.cleanup()
            if not exited or attempt == attempts:
                raise
    raise AssertionError("unreachable")


@pytest.fixture(scope="session")
def etcd_server() -> Iterator[EtcdServer]:
    """One etcd server shared by the whole session (one per xdist worker)."""
    server = _start("etcd-session")
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
    server = _start("etcd-private")
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
