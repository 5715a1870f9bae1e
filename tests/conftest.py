"""Shared fixtures. The real-etcd fixtures (etcd_server, etcd_url,
etcd_prefix, private_etcd, etcd_cluster) come from the etcdvisor.testing
plugin, registered by the package's pytest11 entry point."""

import uuid

import pytest

from etcdvisor.coord import open_backend
from etcdvisor.process import states
from etcdvisor.testing import wait_for

states.STRICT = True  # an invalid state transition is a bug: fail the test (production logs an error)


@pytest.fixture(params=["memory", "etcd"])
def backend_url(request):
    """Run the test once on the in-memory backend and once on real etcd."""
    if request.param == "memory":
        return f"memory://test-{uuid.uuid4().hex[:12]}"
    return request.getfixturevalue("etcd_url")


@pytest.fixture
def backend(backend_url):
    handle = open_backend(backend_url, timeout=5)
    yield handle
    handle.close()


@pytest.fixture
def other_backend(backend_url):
    """A second, independent handle on the same store (another 'process')."""
    handle = open_backend(backend_url, timeout=5)
    yield handle
    handle.close()


@pytest.fixture
def prefix(etcd_prefix):
    return etcd_prefix


# poll a predicate with a deadline; a timeout is a test failure
wait_until = wait_for
