"""Shared fixtures. The real-etcd fixtures (etcd_server, etcd_url,
etcd_prefix, private_etcd, etcd_cluster) come from the etcdvisor.testing
plugin, registered by the package's pytest11 entry point."""

import os
import uuid
from pathlib import Path

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


# --- how the suite is spread over workers (pytest-xdist; addopts has "-n auto") ---------------

# the tests mostly wait on etcd and on real processes, not on the CPU: 4 workers on 2 cores
WORKERS = 4
# real processes, faults and images: every test there is slow ("pytest -m 'not slow'" is the
# unit and contract tests less the few marked slow one by one, under a minute)
SLOW_DIRECTORIES = ("e2e", "integration", "container")
TESTS = Path(__file__).resolve().parent


def pytest_xdist_auto_num_workers(config):
    """``-n auto``: ETCDVISOR_TEST_WORKERS if set; else no workers when only test files (or
    test ids) are named, as while working on one file; else (directories, the whole suite)
    WORKERS."""
    if os.environ.get("ETCDVISOR_TEST_WORKERS"):
        return int(os.environ["ETCDVISOR_TEST_WORKERS"])
    named = [arg.split("::", 1)[0] for arg in config.args]
    if named and all(name.endswith(".py") for name in named):
        return 0
    return WORKERS


def _directory(item) -> str:
    """unit, contract, integration, e2e or container (the folder under tests/)."""
    path = Path(str(item.path))
    return path.relative_to(TESTS).parts[0] if TESTS in path.parents else ""


def _order(item) -> int:
    """Longest first, so no worker is left with a long test at the end: the container tests
    (an image build), e2e, integration, the unit and contract tests marked slow, the other
    contract tests, and the other unit tests last."""
    where = _directory(item)
    order = {"container": 0, "e2e": 1, "integration": 2}
    if where in order:
        return order[where]
    if item.get_closest_marker("slow") is not None:
        return 3
    return 4 if where == "contract" else 5


@pytest.hookimpl(tryfirst=True)  # before xdist turns the groups into node id suffixes
def pytest_collection_modifyitems(config, items):
    for item in items:
        if _directory(item) in SLOW_DIRECTORIES:
            item.add_marker(pytest.mark.slow)
        if _directory(item) == "container":
            # one worker builds the image (session fixtures) and runs every container test
            item.add_marker(pytest.mark.xdist_group("container"))
            continue
        fixturedefs = getattr(item, "_fixtureinfo", None)
        scopes = {d.scope for defs in (fixturedefs.name2fixturedefs.values() if fixturedefs else ())
                  for d in defs}
        if scopes & {"module", "class"}:
            # a module-scoped fixture (a server, a shared run) is set up once: keep its tests together
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))
    items.sort(key=_order)  # stable: the collection order within each class
