"""The backend contract: the same tests on the memory backend and real etcd."""

import queue
import threading
import time

import pytest

from etcdvisor.coord import Compacted, Delete, EventType, Get, LeaseNotFound, Put, Unavailable, prefix_end
from etcdvisor.coord import types as T
from etcdvisor.coord.session import Session, SessionEventKind, SessionState
from etcdvisor.coord.watcher import PrefixWatcher

from ..conftest import wait_until


def collect(stream, out: queue.Queue):
    def run():
        try:
            for batch in stream:
                for ev in batch.events:
                    out.put(ev)
        except Exception as exc:  # surfaced to the test through the queue
            out.put(exc)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def drain(out: queue.Queue, n: int, timeout=5.0):
    items = []
    deadline = time.monotonic() + timeout
    while len(items) < n:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            items.append(out.get(timeout=remaining))
        except queue.Empty:
            break
    return items


def test_put_get_delete(backend, prefix):
    key = prefix + "a"
    assert backend.get(key) is None
    rev = backend.put(key, "one")
    kv = backend.get(key)
    assert kv.value == b"one" and kv.create_revision == rev == kv.mod_revision and kv.version == 1
    rev2 = backend.put(key, b"two")
    kv2 = backend.get(key)
    assert rev2 > rev and kv2.create_revision == rev and kv2.mod_revision == rev2 and kv2.version == 2
    assert backend.delete(key) == 1
    assert backend.get(key) is None
    assert backend.delete(key) == 0  # deleting a missing key is not an error
    backend.put(key, "three")
    assert backend.get(key).version == 1  # version restarts after a delete


def test_range_and_prefix(backend, prefix):
    for name in ("b", "a", "c", "a/x"):
        backend.put(prefix + name, name)
    backend.put(prefix[:-1] + "z", "sibling")  # outside the prefix
    result = backend.get_prefix(prefix)
    assert [kv.key for kv in result.kvs] == [prefix + n for n in ("a", "a/x", "b", "c")]
    assert result.revision == backend.revision()
    sub = backend.range(prefix + "a", prefix + "c")
    assert [kv.value for kv in sub.kvs] == [b"a", b"a/x", b"b"]
    limited = backend.range(prefix, prefix_end(prefix), limit=2)
    assert len(limited.kvs) == 2 and limited.count == 4
    keys_only = backend.get_prefix(prefix, keys_only=True)
    assert all(kv.value == b"" for kv in keys_only.kvs)
    assert backend.delete(prefix, prefix_end(prefix)) == 4
    assert backend.get(prefix[:-1] + "z").value == b"sibling"


def test_historical_read(backend, prefix):
    key = prefix + "h"
    r1 = backend.put(key, "v1")
    backend.put(key, "v2")
    assert backend.range(key, revision=r1).kvs[0].value == b"v1"
    backend.compact(backend.revision())
    with pytest.raises(Compacted):
        backend.range(key, revision=r1)


def test_txn_compares_and_branches(backend, prefix):
    k = prefix + "k"
    # a missing key: create = 0, version = 0; value compares are false
    res = backend.txn([T.missing(k)], [Put(k, "1")], [Get(k)])
    assert res.succeeded and res.responses[0] == res.revision
    kv = backend.get(k)
    res = backend.txn([T.missing(k)], [Put(k, "x")], [Get(k)])
    assert not res.succeeded and res.responses[0][0].value == b"1"
    assert backend.txn([T.value(k, "=", "1")]).succeeded
    assert backend.txn([T.value(k, "!=", "2")]).succeeded
    assert backend.txn([T.value(k, "<", "2")]).succeeded
    assert backend.txn([T.value(k, ">", "0")]).succeeded
    assert not backend.txn([T.value(k, ">", "1")]).succeeded
    assert backend.txn([T.version(k, "=", 1)]).succeeded
    assert backend.txn([T.create_revision(k, "=", kv.create_revision)]).succeeded
    assert backend.txn([T.mod_revision(k, "<", kv.mod_revision + 1)]).succeeded
    assert not backend.txn([T.value(prefix + "missing", "!=", "zzz")]).succeeded
    # all ops of a branch share one revision
    res = backend.txn([], [Put(prefix + "m1", "a"), Put(prefix + "m2", "b"), Delete(k)])
    assert res.responses[2] == 1
    assert backend.get(prefix + "m1").mod_revision == backend.get(prefix + "m2").mod_revision == res.revision
    # a read-only txn does not move the revision
    before = backend.revision()
    backend.txn([], [Get(prefix + "m1")])
    assert backend.revision() == before


def test_lease_lifecycle(backend, prefix):
    lease = backend.lease_grant(30)
    assert lease.ttl >= 30
    backend.put(prefix + "eph", "x", lease=lease.id)
    assert backend.get(prefix + "eph").lease == lease.id
    assert backend.lease_keepalive(lease.id) >= 30
    assert 0 < backend.lease_ttl(lease.id) <= 30
    backend.lease_revoke(lease.id)
    assert backend.get(prefix + "eph") is None
    assert backend.lease_keepalive(lease.id) == 0
    assert backend.lease_ttl(lease.id) == -1
    backend.lease_revoke(lease.id)  # revoking twice is fine
    with pytest.raises(LeaseNotFound):
        backend.put(prefix + "eph2", "x", lease=lease.id)
    assert backend.get(prefix + "eph2") is None


@pytest.mark.slow  # seconds of real time: left out of the fast part (-m "not slow")
def test_lease_expires_without_keepalive(backend, prefix):
    lease = backend.lease_grant(2)
    backend.put(prefix + "eph", "x", lease=lease.id)
    start = time.monotonic()
    wait_until(lambda: backend.get(prefix + "eph") is None, timeout=6, message="lease expiry")
    assert time.monotonic() - start >= 1.0


def test_watch_from_revision_and_live(backend, other_backend, prefix):
    r1 = backend.put(prefix + "w1", "a")
    backend.put(prefix + "w2", "b")
    out = queue.Queue()
    stream = backend.watch(prefix, prefix_end(prefix), start_revision=r1, prev_kv=True)
    collect(stream, out)
    other_backend.put(prefix + "w1", "c")  # write from another handle
    other_backend.delete(prefix + "w2")
    events = drain(out, 4)
    assert [(e.type, e.kv.key) for e in events] == [
        (EventType.PUT, prefix + "w1"), (EventType.PUT, prefix + "w2"),
        (EventType.PUT, prefix + "w1"), (EventType.DELETE, prefix + "w2")]
    revs = [e.kv.mod_revision for e in events]
    assert revs == sorted(revs) and len(set(revs)) == 4
    assert events[3].prev_kv.value == b"b"
    stream.cancel()


def test_watch_sees_write_made_right_after_it_returns(backend, prefix):
    out = queue.Queue()
    stream = backend.watch(prefix + "now")
    collect(stream, out)
    backend.put(prefix + "now", "x")
    assert drain(out, 1)[0].kv.value == b"x"
    stream.cancel()


def test_watch_cancel_ends_iteration(backend, prefix):
    stream = backend.watch(prefix)
    done = threading.Event()

    def run():
        for _ in stream:
            pass
        done.set()
    threading.Thread(target=run, daemon=True).start()
    stream.cancel()
    assert done.wait(5)


def test_watch_compacted_start_revision(backend, prefix):
    r1 = backend.put(prefix + "c", "1")
    backend.put(prefix + "c", "2")
    backend.put(prefix + "c", "3")
    backend.compact(backend.revision())
    with pytest.raises(Compacted):
        stream = backend.watch(prefix, prefix_end(prefix), start_revision=r1)
        for _ in stream:
            break


def test_lease_revoke_deletes_in_one_revision(backend, prefix):
    lease = backend.lease_grant(30)
    backend.put(prefix + "l1", "a", lease=lease.id)
    backend.put(prefix + "l2", "b", lease=lease.id)
    out = queue.Queue()
    stream = backend.watch(prefix, prefix_end(prefix))
    collect(stream, out)
    backend.lease_revoke(lease.id)
    events = drain(out, 2)
    assert {e.type for e in events} == {EventType.DELETE}
    assert len({e.kv.mod_revision for e in events}) == 1
    stream.cancel()


def test_prefix_watcher_snapshot_and_changes(backend, other_backend, prefix):
    backend.put(prefix + "m/a", "1")
    changes = queue.Queue()
    watcher = PrefixWatcher(backend, prefix + "m/", changes.put, name="t").start(wait=5)
    first = changes.get(timeout=5)
    assert first.initial and list(first.snapshot) == [prefix + "m/a"]
    other_backend.put(prefix + "m/b", "2")
    other_backend.put(prefix + "other", "x")  # sibling prefix: not seen
    change = changes.get(timeout=5)
    assert set(change.snapshot) == {prefix + "m/a", prefix + "m/b"}
    assert [kv.key for kv in change.ordered()] == [prefix + "m/a", prefix + "m/b"]
    watcher.stop()


def test_prefix_watcher_resyncs_after_compaction(backend_url, prefix):
    """Cut the watcher's stream, write and compact behind its back: when it
    comes back it must notice the compaction, re-read and re-diff."""
    from etcdvisor.coord import open_backend
    from etcdvisor.testing.proxy import TcpProxy

    proxy = None
    if backend_url.startswith("memory://"):
        # partition this one handle: its watches break and new ones fail
        watched = open_backend(backend_url)
        real_watch = watched.watch

        def refuse(*args, **kwargs):
            raise Unavailable("cut off by the test")

        def cut():
            watched.watch = refuse
            watched.store.break_watches()

        def heal():
            watched.watch = real_watch
    else:
        proxy = TcpProxy.to_url(backend_url)
        watched = open_backend(proxy.url, timeout=1)
        cut, heal = proxy.reset, proxy.restore
    direct = open_backend(backend_url)
    direct.put(prefix + "gone", "x")
    changes = queue.Queue()
    watcher = PrefixWatcher(watched, prefix, changes.put, name="t", retry_interval=0.1).start(wait=5)
    assert changes.get(timeout=5).initial
    cut()
    direct.put(prefix + "x", "1")
    direct.put(prefix + "x", "2")
    direct.delete(prefix + "gone")
    direct.compact(direct.revision())
    heal()
    change = changes.get(timeout=15)
    assert change.resynced and set(change.snapshot) == {prefix + "x"}
    assert change.snapshot[prefix + "x"].value == b"2"
    assert {(e.type, e.kv.key) for e in change.events} == {
        (EventType.PUT, prefix + "x"), (EventType.DELETE, prefix + "gone")}
    watcher.stop()
    for handle in (watched, direct):
        handle.close()
    if proxy:
        proxy.close()


@pytest.mark.slow  # seconds of real time: left out of the fast part (-m "not slow")
def test_session_keepalive_and_revoke(backend, other_backend, prefix):
    events = queue.Queue()
    session = Session(backend, ttl=3, interval=0.2, name="t")
    session.add_listener(events.put)
    session.start()
    backend.put(prefix + "member", "me", lease=session.lease_id)
    t0 = time.monotonic()
    assert session.confirm(after=t0, timeout=5)
    assert session.last_alive_sent > t0
    time.sleep(3.5)  # longer than the TTL: keepalives must hold the key
    assert other_backend.get(prefix + "member") is not None
    session.close()
    assert other_backend.get(prefix + "member") is None
    kinds = set()
    while not events.empty():
        kinds.add(events.get().kind)
    assert SessionEventKind.KEEPALIVE in kinds


def test_session_regrants_after_lease_lost(backend, other_backend, prefix):
    events = queue.Queue()
    session = Session(backend, ttl=5, interval=0.2, name="t")
    session.add_listener(events.put)
    session.start()
    old = session.lease_id
    other_backend.lease_revoke(old)  # someone else revokes our lease
    wait_until(lambda: session.state is SessionState.ALIVE and session.lease_id != old,
               timeout=5, message="new lease")
    seen = set()
    while not events.empty():
        seen.add(events.get().kind)
    assert {SessionEventKind.LOST, SessionEventKind.NEW_LEASE} <= seen
    session.close()
