"""Shared fixtures. The real-etcd fixtures (etcd_server, etcd_url,
etcd_prefix, private_etcd, etcd_cluster) come from the etcdvisor.testing
plugin, registered by the package's pytest11 entry point."""

import time
import uuid

import pytest

from etcdvisor.coord import open_backend


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


def wait_until(predicate, timeout=5.0, interval=0.02, message="condition"):
    """Poll ``predicate`` until true; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)
