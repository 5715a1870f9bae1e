"""Issue 16, section 3: a read or watch the store refuses (PermissionDenied)
is never a silent retry loop (coord/follow.py)."""

from __future__ import annotations

import logging
import os
import threading

import pytest

from etcdvisor.coord import follow, open_backend
from etcdvisor.coord.errors import PermissionDenied
from etcdvisor.coord.watcher import PrefixWatcher


@pytest.fixture
def backend(monkeypatch):
    monkeypatch.setattr(follow, "DENIED_RETRY", 0.05)  # retried quickly here
    backend = open_backend("memory://unit-follow-denied-" + os.urandom(3).hex())
    yield backend
    backend.close()


DENIED = PermissionDenied("range '/p/': permission denied for etcd user 'u'")


def test_a_refusal_goes_to_on_error_and_a_later_grant_is_picked_up(backend):
    errors, snapshots = [], []
    got_error, synced = threading.Event(), threading.Event()
    backend.store.fail_calls(DENIED)

    def on_error(error):
        errors.append(error)
        got_error.set()

    def on_change(change):
        snapshots.append(change)
        synced.set()

    watcher = PrefixWatcher(backend, "/p/", on_change, name="t", on_error=on_error).start()
    try:
        assert got_error.wait(5) and isinstance(errors[0], PermissionDenied) and not snapshots
        backend.store.fail_calls(None)  # the grant is added
        assert synced.wait(5) and snapshots[0].initial
    finally:
        watcher.stop()


def test_without_on_error_it_is_logged_once_as_an_error(backend, caplog):
    caplog.set_level(logging.DEBUG, logger="etcdvisor.coord.follow")
    backend.store.fail_calls(DENIED)
    tried = threading.Event()
    calls = [0]
    real_range = backend.range

    def counting_range(*args, **kwargs):
        calls[0] += 1
        if calls[0] >= 3:
            tried.set()
        return real_range(*args, **kwargs)

    backend.range = counting_range
    watcher = PrefixWatcher(backend, "/p/", lambda _c: None, name="watch:/p/").start()
    try:
        assert tried.wait(5)  # tried three times: two refusals after the first
    finally:
        watcher.stop()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert "watch:/p/: range '/p/': permission denied for etcd user 'u'" in errors[0].getMessage()


def test_a_refused_control_watch_is_said_once_and_still_counted(backend, caplog):
    from etcdvisor.coord.keys import ClusterKeys
    from etcdvisor.runtime.control import ControlWatch

    caplog.set_level(logging.INFO, logger="etcdvisor")
    backend.store.fail_calls(PermissionDenied("range '/etcdvisor/c/control/': permission denied "
                                              "for etcd user 'u'"))
    counted = []
    three = threading.Event()

    def count(error):
        counted.append(error)
        if len(counted) >= 3:
            three.set()

    watch = ControlWatch(backend, ClusterKeys("c"), lambda _e: None, on_error=count).start(wait=0)
    try:
        assert three.wait(5)
    finally:
        watch.stop()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    assert errors[0].startswith("control records: range '/etcdvisor/c/control/': permission denied for etcd "
                                "user 'u'; ")


def test_a_refused_barrier_is_posted_for_the_roles_waiting_on_it(backend, tmp_path):
    import yaml

    from etcdvisor.config import load
    from etcdvisor.coord.keys import ClusterKeys
    from etcdvisor.runtime.barriers import BarrierFact, BarrierGate

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"cluster": "c", "etcd": {"endpoints": "memory://x"}, "roles": {
        "app": {"type": "singleton", "command": ["true"], "wait_for": ["warm"]},
        "other": {"type": "singleton", "command": ["true"]}}}))
    denied = PermissionDenied("range '/etcdvisor/c/waitgroups/warm': permission denied for etcd user 'u'")
    backend.store.fail_calls(denied)
    posted, got = [], threading.Event()

    def post(fact):
        posted.append(fact)
        got.set()

    gate = BarrierGate(load(path), ClusterKeys("c"), backend, post)
    gate.start()
    try:
        assert got.wait(5)
    finally:
        gate.stop()
    assert (posted[0].name, posted[0].open, str(posted[0].denied)) == ("waitgroup:warm", False, str(denied))
    assert isinstance(posted[0], BarrierFact) and isinstance(posted[0].denied, PermissionDenied)
    gate.update(posted[0])
    assert gate.waiting("waitgroup:warm") == ["app"] and not gate.allows("app") and gate.allows("other")


def test_the_loop_fails_only_the_roles_waiting_on_a_refused_barrier(caplog):
    from etcdvisor.runtime.barriers import BarrierFact

    from .loop_harness import LoopHarness

    h = LoopHarness("""
cluster: loop
etcd: {endpoints: "memory://loop"}
member: {ttl: 10}
roles:
  app: {type: sharded, command: ["app"], wait_for: [warm]}
  plain: {type: sharded, command: ["plain"]}
""")
    caplog.set_level(logging.INFO, logger="etcdvisor")
    denied = PermissionDenied("range '/etcdvisor/loop/waitgroups/warm': permission denied for etcd user 'u'")
    for _ in range(2):  # a refusal is posted at every retry: one line, once
        h.post(BarrierFact("waitgroup:warm", False, denied=denied))
        h.turn()
    assert h.sup.runners["app"].failed_reason.startswith(f"barrier waitgroup:warm: {denied}")
    assert h.sup.runners["plain"].failed_reason is None
    lines = [r.getMessage() for r in caplog.records if "FAILED" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith(f"role app: FAILED: barrier waitgroup:warm: {denied} "), lines
