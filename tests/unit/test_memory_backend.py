"""Unit tests of the in-memory backend (etcd v3 semantics, fake and real clock)."""

from __future__ import annotations

import queue
import threading
import time

import pytest

from etcdvisor.coord import open_backend
from etcdvisor.coord.errors import Closed, Compacted, CoordError, CoordTimeout, LeaseNotFound, Unavailable
from etcdvisor.coord.memory import FakeClock, MemoryBackend, MemoryStore
from etcdvisor.coord.types import (
    Compare,
    Delete,
    EventType,
    Get,
    KeyValue,
    Put,
    create_revision,
    missing,
    mod_revision,
    prefix_end,
    value,
    version,
)


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def kv(clock):
    backend = MemoryBackend(clock=clock)
    yield backend
    backend.close()


def drain(stream, n):
    """The next ``n`` batches, which the test knows are already queued."""
    it = iter(stream)
    return [next(it) for _ in range(n)]


def next_within(stream, seconds):
    """Next batch (or the exception) from a helper thread, or None on timeout."""
    box: queue.Queue = queue.Queue()

    def pull():
        try:
            box.put(next(iter(stream)))
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box.put(exc)

    threading.Thread(target=pull, daemon=True).start()
    try:
        return box.get(timeout=seconds)
    except queue.Empty:
        return None


# --- revisions ---------------------------------------------------------------

def test_fresh_store_is_at_revision_one_and_every_put_bumps(kv):
    assert kv.revision() == 1
    assert kv.put("a", b"1") == 2
    assert kv.put("a", b"1") == 3  # same value still writes, like etcd
    assert kv.revision() == 3


def test_create_mod_version_and_recreate_resets(kv):
    kv.put("k", "v1")
    kv.put("k", "v2")
    assert kv.get("k") == KeyValue("k", b"v2", 2, 3, 2, 0)
    assert kv.delete("k") == 1
    assert kv.get("k") is None
    rev = kv.put("k", "again")
    assert kv.get("k") == KeyValue("k", b"again", rev, rev, 1, 0)


def test_delete_of_nothing_does_not_bump(kv):
    kv.put("a", "x")
    rev = kv.revision()
    assert kv.delete("missing") == 0
    assert kv.delete("b", "c") == 0
    assert kv.revision() == rev


def test_range_delete_takes_one_revision(kv):
    for key in ("p/1", "p/2", "p/3", "q"):
        kv.put(key, "x")
    rev = kv.revision()
    assert kv.delete("p/", prefix_end("p/")) == 3
    assert kv.revision() == rev + 1
    assert kv.get("q") is not None
    assert kv.get_prefix("p/").kvs == ()


# --- transactions --------------------------------------------------------------

def test_txn_ops_share_one_revision_and_reads_see_earlier_writes(kv):
    kv.put("gone", "x")
    rev = kv.revision()
    result = kv.txn([], [Get("a"), Put("a", "1"), Put("b", "2"), Delete("gone"), Get("a")])
    assert result.succeeded and result.revision == rev + 1
    first_get, put_a, put_b, deleted, second_get = result.responses
    assert first_get == ()
    assert put_a == put_b == rev + 1
    assert deleted == 1
    assert second_get == (KeyValue("a", b"1", rev + 1, rev + 1, 1, 0),)
    assert kv.get("b").mod_revision == rev + 1


def test_read_only_branch_does_not_bump(kv):
    kv.put("a", "1")
    rev = kv.revision()
    result = kv.txn([missing("a")], [Put("a", "2")], [Get("a")])
    assert not result.succeeded
    assert result.revision == rev and kv.revision() == rev
    assert result.responses[0][0].value == b"1"
    assert kv.txn([], [Delete("nothing")]).revision == rev


def test_failure_branch_writes(kv):
    kv.put("a", "1")
    result = kv.txn([value("a", "=", "other")], [Put("s", "x")], [Put("f", "y")])
    assert not result.succeeded
    assert kv.get("s") is None and kv.get("f").value == b"y"
    assert result.responses == (result.revision,)


def test_duplicate_keys_in_a_branch_are_rejected_like_etcd(kv):
    with pytest.raises(CoordError, match="duplicate key"):
        kv.txn([], [Put("a", "1"), Put("a", "2")])
    with pytest.raises(CoordError, match="duplicate key"):
        kv.txn([], [Delete("a", "c"), Put("b", "1")])
    with pytest.raises(CoordError, match="duplicate key"):  # checked in the branch not taken too
        kv.txn([], [Put("x", "1")], [Put("a", "1"), Put("a", "2")])
    kv.txn([], [Delete("a", "c"), Delete("b")])  # overlapping deletes are fine
    assert kv.revision() == 1


def test_request_limits(kv):
    with pytest.raises(CoordError, match="too many operations"):
        kv.txn([], [Put(f"k{i}", "v") for i in range(129)])
    with pytest.raises(CoordError, match="too large"):
        kv.put("big", b"x" * (2 * 1024 * 1024))
    with pytest.raises(CoordError, match="key is not provided"):
        kv.put("", "x")
    with pytest.raises(CoordError, match="key is not provided"):
        kv.get("")
    with pytest.raises(CoordError, match="key is not provided"):
        kv.txn([value("", "=", "x")])
    assert kv.revision() == 1


# --- compares --------------------------------------------------------------------

@pytest.mark.parametrize("target", ["version", "create", "mod", "lease"])
def test_missing_key_compares_as_zero(kv, target):
    assert kv.txn([Compare("nope", target, "=", 0)]).succeeded
    assert not kv.txn([Compare("nope", target, ">", 0)]).succeeded
    assert kv.txn([Compare("nope", target, "<", 1)]).succeeded
    assert not kv.txn([Compare("nope", target, "!=", 0)]).succeeded


@pytest.mark.parametrize("op", ["=", "!=", "<", ">"])
def test_value_compare_on_missing_key_is_always_false(kv, op):
    assert not kv.txn([value("nope", op, b"")]).succeeded
    assert not kv.txn([value("nope", op, b"x")]).succeeded


def test_value_compares_are_lexicographic_bytes(kv):
    kv.put("k", b"abc")
    assert kv.txn([value("k", "=", "abc")]).succeeded
    assert kv.txn([value("k", "!=", b"abd")]).succeeded
    assert kv.txn([value("k", "<", b"abd")]).succeeded
    assert kv.txn([value("k", "<", b"b")]).succeeded
    assert kv.txn([value("k", ">", b"ab")]).succeeded
    assert not kv.txn([value("k", ">", b"abc")]).succeeded
    assert kv.txn([value("k", ">", b"")]).succeeded


def test_int_compares_on_existing_key(kv, clock):
    lease = kv.lease_grant(10)
    rev = kv.put("k", "v", lease=lease.id)
    kv.put("k", "w", lease=lease.id)
    assert kv.txn([version("k", "=", 2), create_revision("k", "=", rev),
                   mod_revision("k", ">", rev), Compare("k", "lease", "=", lease.id)]).succeeded
    assert not kv.txn([version("k", "=", 2), mod_revision("k", "<", rev)]).succeeded  # all must hold
    assert not kv.txn([missing("k")]).succeeded
    with pytest.raises(CoordError):
        kv.txn([Compare("k", "version", "=", "2")])


# --- ranges and history ------------------------------------------------------------

def test_range_is_sorted_by_utf8_bytes_with_limit_count_keys_only(kv):
    keys = ["r/z", "r/\u00e9", "r/Z", "r/a", "r/\U0001f600", "r/a/b"]
    for k in keys:
        kv.put(k, "v-" + k)
    res = kv.get_prefix("r/")
    assert [x.key for x in res.kvs] == sorted(keys, key=lambda k: k.encode())
    assert res.count == 6 and res.revision == kv.revision()
    limited = kv.range("r/", prefix_end("r/"), limit=2, keys_only=True)
    assert limited.count == 6 and len(limited.kvs) == 2
    assert all(x.value == b"" and x.version == 1 for x in limited.kvs)
    assert [x.key for x in kv.range("r/a", "r/z").kvs] == ["r/a", "r/a/b"]
    assert kv.range("r/z", "r/a").kvs == ()  # end before start: nothing
    assert len(kv.range("\0", "\0").kvs) == 6  # "\0" end: every key from start
    assert kv.range("r/a").kvs[0].value == b"v-r/a"


def test_prefix_end_of_high_bytes_round_trips(kv):
    kv.put("\u00ff", "x")  # UTF-8 c3 bf
    kv.put("\u0100", "y")  # UTF-8 c4 80: after the prefix range of "\u00ff"
    assert [x.key for x in kv.get_prefix("\u00ff").kvs] == ["\u00ff"]


def test_historical_reads(kv):
    r1 = kv.put("h", "1")
    r2 = kv.put("h", "2")
    kv.delete("h")
    kv.put("other", "x")
    assert kv.range("h", revision=r1).kvs[0].value == b"1"
    assert kv.range("h", revision=r2).kvs[0].value == b"2"
    assert kv.range("h").kvs == ()
    assert kv.range("h", revision=1).kvs == ()
    assert kv.range("h", revision=r1).revision == kv.revision()  # header: current, like etcd
    with pytest.raises(CoordError, match="future revision") as info:
        kv.range("h", revision=kv.revision() + 1)
    assert not isinstance(info.value, Compacted)


def test_compaction(kv):
    r1 = kv.put("c", "1")
    r2 = kv.put("c", "2")
    r3 = kv.put("d", "x")
    kv.compact(r2)
    with pytest.raises(Compacted) as info:
        kv.range("c", revision=r1)
    assert info.value.compact_revision == r2
    assert kv.range("c", revision=r2).kvs[0].value == b"2"  # at the compact revision: allowed
    assert kv.range("d", revision=r2).kvs == ()
    assert kv.range("d", revision=r3).kvs[0].value == b"x"
    with pytest.raises(Compacted):
        kv.compact(r2)  # etcd refuses compacting again at or below
    with pytest.raises(CoordError, match="future"):
        kv.compact(kv.revision() + 1)


def test_compaction_keeps_latest_version_and_drops_tombstones(kv):
    kv.put("keep", "old")
    kv.put("gone", "x")
    kv.delete("gone")
    kv.put("keep", "new")
    kv.put("z", "z")
    kv.compact(kv.revision())
    assert kv.get("keep").value == b"new"
    assert kv.get("gone") is None
    assert kv.store._keys.history.get(b"gone") is None  # tombstone dropped


# --- leases ----------------------------------------------------------------------

def test_lease_grant_ttl_and_keepalive_on_fake_clock(kv, clock):
    lease = kv.lease_grant(10)
    assert lease.ttl == 10 and lease.id > 0
    assert kv.lease_grant(0).ttl == 1  # at least one second
    assert kv.lease_ttl(lease.id) == 10
    clock.advance(2.5)
    assert kv.lease_ttl(lease.id) == 7  # etcd truncates 7.5 seconds
    assert kv.lease_keepalive(lease.id) == 10
    assert kv.lease_ttl(lease.id) == 10
    clock.advance(9.5)
    assert kv.lease_ttl(lease.id) == 0  # still alive for half a second
    assert kv.lease_keepalive(lease.id) == 10
    clock.advance(10)
    assert kv.lease_ttl(lease.id) == -1
    assert kv.lease_keepalive(lease.id) == 0


def test_lease_ids_are_distinct(kv):
    ids = {kv.lease_grant(5).id for _ in range(200)}
    assert len(ids) == 200 and all(i > 0 for i in ids)


def test_put_with_unknown_lease_writes_nothing(kv, clock):
    kv.put("k", "old")
    rev = kv.revision()
    with pytest.raises(LeaseNotFound):
        kv.put("k", "new", lease=12345)
    lease = kv.lease_grant(1)
    clock.advance(1)
    with pytest.raises(LeaseNotFound):
        kv.txn([], [Put("a", "1"), Put("b", "2", lease=lease.id)])
    assert kv.revision() == rev and kv.get("k").value == b"old" and kv.get("a") is None
    # only the branch that runs is checked
    assert not kv.txn([missing("k")], [Put("x", "1", lease=999)], [Put("y", "1")]).succeeded


def test_revoke_deletes_attached_keys_at_one_revision(kv):
    lease = kv.lease_grant(30)
    for key in ("l/b", "l/a", "l/c") + tuple(f"l/m{i}" for i in range(30, 0, -1)):
        kv.put(key, "x", lease=lease.id)
    kv.put("l/c", "detached")  # re-put without a lease detaches the key
    stream = kv.watch("l/", prefix_end("l/"), prev_kv=True)
    rev = kv.revision()
    kv.lease_revoke(lease.id)
    assert kv.revision() == rev + 1
    [batch] = drain(stream, 1)
    assert batch.revision == rev + 1
    assert all((e.type, e.kv.mod_revision) == (EventType.DELETE, rev + 1) for e in batch.events)
    deleted = [e.kv.key for e in batch.events]
    assert deleted == sorted(deleted) and len(deleted) == 32 and "l/c" not in deleted  # key order
    assert batch.events[0].kv == KeyValue("l/a", b"", 0, rev + 1, 0, 0)
    assert batch.events[0].prev_kv.value == b"x" and batch.events[0].prev_kv.lease == lease.id
    assert kv.get("l/c").value == b"detached"
    kv.lease_revoke(lease.id)  # missing lease: not an error
    assert kv.lease_ttl(lease.id) == -1
    empty = kv.lease_grant(5)
    kv.lease_revoke(empty.id)  # no keys: no revision
    assert kv.revision() == rev + 1


def test_fake_clock_advance_expires_and_notifies_watchers_at_once(kv, clock):
    short, longer = kv.lease_grant(5), kv.lease_grant(6)
    kv.put("e/1", "a", lease=short.id)
    kv.put("e/2", "b", lease=longer.id)
    stream = kv.watch("e/", prefix_end("e/"))
    rev = kv.revision()
    clock.advance(4.9)
    assert kv.revision() == rev
    clock.advance(10)  # both due: each lease is revoked at its own revision, in deadline order
    [first, second] = drain(stream, 2)  # no backend call was needed
    assert (first.revision, first.events[0].kv.key) == (rev + 1, "e/1")
    assert (second.revision, second.events[0].kv.key) == (rev + 2, "e/2")
    assert kv.get_prefix("e/").kvs == ()


def test_calls_expire_leases_on_any_clock():
    now = [50.0]
    backend = MemoryBackend(clock=lambda: now[0])  # a clock without advance(): calls must check
    try:
        lease = backend.lease_grant(5)
        backend.put("k", "v", lease=lease.id)
        now[0] += 5
        assert backend.get("k") is None
        assert backend.lease_ttl(lease.id) == -1
    finally:
        backend.close()


def test_deleted_key_leaves_its_lease(kv):
    lease = kv.lease_grant(5)
    kv.put("k", "v", lease=lease.id)
    kv.delete("k")
    rev = kv.revision()
    kv.lease_revoke(lease.id)
    assert kv.revision() == rev


def test_real_clock_lease_expires_without_calls():
    backend = MemoryBackend()
    try:
        lease = backend.lease_grant(1)
        backend.put("rt", "x", lease=lease.id)
        stream = backend.watch("rt")
        started = time.monotonic()
        batch = next_within(stream, 2.0)  # ttl + 1s
        assert batch is not None, "lease did not expire within ttl+1s"
        assert batch.events[0].type is EventType.DELETE
        assert time.monotonic() - started >= 0.5  # not deleted right away
        deadline = time.monotonic() + 5
        while backend.store._expiry_thread is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert backend.store._expiry_thread is None  # the timer thread ends with the last lease
    finally:
        backend.close()


@pytest.mark.slow  # seconds of real time: left out of the fast part (-m "not slow")
def test_real_clock_keepalive_keeps_lease():
    backend = MemoryBackend()
    try:
        lease = backend.lease_grant(1)
        backend.put("ka", "x", lease=lease.id)
        for _ in range(4):
            time.sleep(0.4)
            assert backend.lease_keepalive(lease.id) == 1
        assert backend.get("ka") is not None
    finally:
        backend.close()


# --- watches ---------------------------------------------------------------------

def test_watch_from_now_sees_writes_after_it_returns(kv):
    kv.put("w", "before")
    stream = kv.watch("w")
    kv.put("w", "after")
    kv.put("other", "x")
    [batch] = drain(stream, 1)
    assert batch.events[0].kv.value == b"after" and batch.events[0].prev_kv is None


def test_watch_replays_from_revision_in_order_grouped_per_txn(kv):
    r1 = kv.put("x/a", "1")
    kv.txn([], [Put("x/b", "2"), Put("x/c", "3"), Put("y", "no")])
    kv.delete("x/a")
    stream = kv.watch("x/", prefix_end("x/"), start_revision=r1, prev_kv=True)
    kv.put("x/b", "4")
    batches = drain(stream, 4)
    assert [b.revision for b in batches] == [r1 + 2] * 3 + [r1 + 3]  # replay: header = current
    assert [b.events[0].kv.mod_revision for b in batches] == [r1, r1 + 1, r1 + 2, r1 + 3]
    assert [e.kv.key for e in batches[1].events] == ["x/b", "x/c"]
    delete = batches[2].events[0]
    assert delete.type is EventType.DELETE and delete.kv.value == b""
    assert delete.prev_kv.value == b"1"
    assert batches[3].events[0].prev_kv.value == b"2"
    assert batches[3].revision == r1 + 3


def test_watch_from_future_revision_waits(kv):
    start = kv.revision() + 2
    stream = kv.watch("f", start_revision=start)
    kv.put("f", "skipped")
    kv.put("f", "seen")
    [batch] = drain(stream, 1)
    assert batch.events[0].kv.value == b"seen"


def test_watch_compacted_start_raises_from_iteration(kv):
    r1 = kv.put("c", "1")
    r2 = kv.put("c", "2")
    kv.put("c", "3")
    kv.compact(r2)
    stream = kv.watch("c", start_revision=r1)  # the error comes on the stream, like etcd
    with pytest.raises(Compacted) as info:
        next(iter(stream))
    assert info.value.compact_revision == r2
    with pytest.raises(StopIteration):
        next(iter(stream))
    ok = kv.watch("c", start_revision=r2, prev_kv=True)  # at the compact revision: allowed
    first, second = drain(ok, 2)
    assert first.events[0].kv.mod_revision == r2
    assert first.events[0].prev_kv is None  # revision r2-1 is compacted away
    assert second.events[0].prev_kv.value == b"2"


def test_watch_from_compact_revision_skips_its_deletes(kv):
    kv.put("a", "1")
    rev = kv.txn([], [Delete("a"), Put("b", "2")]).revision
    kv.compact(rev)
    [batch] = drain(kv.watch("\0", "\0", start_revision=rev), 1)
    assert [(e.type, e.kv.key) for e in batch.events] == [(EventType.PUT, "b")]


def test_slow_consumer_never_blocks_writers(kv):
    stream = kv.watch("s")
    for i in range(5000):
        kv.put("s", str(i))
    batches = drain(stream, 5000)
    assert [b.events[0].kv.value for b in batches[-2:]] == [b"4998", b"4999"]


def test_concurrent_writers_reach_a_watcher_once_each_in_order(kv):
    stream = kv.watch("cw/", prefix_end("cw/"))
    first = kv.revision() + 1

    def writer(n):
        for i in range(200):
            kv.txn([], [Put(f"cw/{n}/{i}", "x"), Put(f"cw/{n}/{i}b", "y")])

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    batches = drain(stream, 800)
    assert [b.revision for b in batches] == list(range(first, first + 800))
    assert all(len(b.events) == 2 for b in batches)
    assert kv.get_prefix("cw/").count == 1600


def test_cancel_from_another_thread_ends_iteration(kv):
    stream = kv.watch("c")
    seen, done = [], threading.Event()

    def consume():
        for batch in stream:
            seen.append(batch)
        done.set()

    consumer = threading.Thread(target=consume, daemon=True)
    consumer.start()
    kv.put("c", "1")
    deadline = time.monotonic() + 5
    while not seen and time.monotonic() < deadline:
        time.sleep(0.01)
    stream.cancel()
    assert done.wait(5), "iteration did not end after cancel()"
    stream.cancel()  # twice is fine
    kv.put("c", "2")
    assert len(seen) == 1
    assert not kv.store._watchers


def test_close_ends_streams_and_other_handles_keep_working(clock):
    store = MemoryStore(clock=clock)
    one, two = MemoryBackend(store), MemoryBackend(store)
    stream = one.watch("k")
    other = two.watch("k")
    result = []
    consumer = threading.Thread(target=lambda: result.extend(stream), daemon=True)
    consumer.start()
    one.close()
    consumer.join(5)
    assert not consumer.is_alive() and result == []
    one.close()  # twice is fine
    for call in (lambda: one.get("k"), lambda: one.put("k", "v"), lambda: one.watch("k"),
                 lambda: one.lease_grant(5), one.revision):
        with pytest.raises(Closed):
            call()
    two.put("k", "v")
    assert drain(other, 1)[0].events[0].kv.value == b"v"


def test_progress_notification_helper(kv):
    quiet = kv.watch("p")
    loud = kv.watch("p", progress_notify=True)
    kv.store.notify_progress()
    kv.put("p", "x")
    [progress, event] = drain(loud, 2)
    assert progress.events == () and progress.revision == kv.revision() - 1
    assert drain(quiet, 1)[0].events[0].kv.value == b"x"


# --- named stores ----------------------------------------------------------------

def test_named_stores_are_shared_per_name():
    a = open_backend("memory://test-memory-shared")
    b = open_backend("memory://test-memory-shared")
    c = open_backend("memory://test-memory-other")
    try:
        assert a is not b and a.store is b.store and a.store is not c.store
        a.put("k", "v")
        assert b.get("k").value == b"v" and c.get("k") is None
        assert a.url == "memory://test-memory-shared"
        a.close()
        assert open_backend("memory://test-memory-shared").get("k").value == b"v"
        anonymous = MemoryBackend()
        assert open_backend(anonymous.url).store is anonymous.store
    finally:
        for backend in (b, c):
            backend.close()


# --- fault injection ---------------------------------------------------------------

def test_fail_calls_simulates_a_partition(kv, clock):
    lease = kv.lease_grant(3)
    kv.put("k", "v", lease=lease.id)
    kv.store.fail_calls()
    for call in (lambda: kv.get("k"), lambda: kv.lease_keepalive(lease.id), kv.revision,
                 lambda: kv.watch("k")):
        with pytest.raises(Unavailable):
            call()
    kv.store.fail_calls(CoordTimeout("slow"))
    with pytest.raises(CoordTimeout):
        kv.put("k", "w")
    clock.advance(3)  # the lease expires while the client is cut off
    kv.store.fail_calls(None)
    assert kv.get("k") is None and kv.lease_keepalive(lease.id) == 0


def test_break_watches_raises_unavailable_once(kv):
    stream = kv.watch("b")
    kv.put("b", "lost")
    kv.store.break_watches()
    with pytest.raises(Unavailable):
        next(iter(stream))
    with pytest.raises(StopIteration):
        next(iter(stream))
    fresh = kv.watch("b", start_revision=kv.revision())
    assert drain(fresh, 1)[0].events[0].kv.value == b"lost"


def test_break_watches_wakes_a_blocked_consumer(kv):
    stream = kv.watch("b")
    box: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: box.put(next_within(stream, 10)), daemon=True).start()
    time.sleep(0.1)
    kv.store.break_watches()
    assert isinstance(box.get(timeout=5), Unavailable)
