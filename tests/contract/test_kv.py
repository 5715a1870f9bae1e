"""The KV facade (etcdvisor.kv), on the memory backend and on real etcd."""

import queue
import threading
import time

import pytest

from etcdvisor import kv as kvmod
from etcdvisor.coord import InvalidURL, open_backend
from etcdvisor.kv import KV, KeyChange, LockLost, LockNotHeld, LockReentry, LockTimeout

from ..conftest import wait_until


@pytest.fixture
def store(backend_url):
    handle = kvmod.open(backend_url, timeout=5, session_ttl=5)
    yield handle
    handle.close()


@pytest.fixture
def other_store(backend_url):
    handle = kvmod.open(backend_url, timeout=5, session_ttl=5)
    yield handle
    handle.close()


def later(delay, action):
    timer = threading.Timer(delay, action)
    timer.start()
    return timer


def test_open_forms_and_context_manager():
    with kvmod.open("mem:") as a, kvmod.open("memory://") as b:
        a.store("/kv-open/k", "v")
        assert b.get("/kv-open/k") == "v"  # both name the default store
        a.delete("/kv-open/k")
    with pytest.raises(InvalidURL):
        kvmod.open("ftp://nowhere")


def test_get_store_exists_delete(store, other_store, prefix):
    key = prefix + "k"
    assert store.get(key) is None and store.get(key, "dflt") == "dflt"
    assert not store.exists(key) and store.get_kv(key) is None
    store.store(key, "The rain in Spain é")
    assert other_store.get(key) == "The rain in Spain é"
    assert store.exists(key)
    raw = store.get_kv(key)
    assert raw.value == "The rain in Spain é".encode() and raw.version == 1
    assert store.delete(key) is True
    assert store.delete(key) is False  # missing is fine
    assert store.get(key) is None
    with pytest.raises(TypeError):
        store.store(key, b"bytes")


def test_get_range_end_exclusive_and_prefix(store, prefix):
    for name in ("x0", "x1", "x5", "x9", "y0"):
        store.store(prefix + name, name.upper())
    assert store.get_range(prefix + "x0", prefix + "x9") == [
        (prefix + "x0", "X0"), (prefix + "x1", "X1"), (prefix + "x5", "X5")]
    assert [k for k, _ in store.get_prefix(prefix + "x")] == [prefix + n for n in ("x0", "x1", "x5", "x9")]
    assert store.get_range(prefix + "z", prefix + "zz") == []


def test_test_and_set(store, prefix):
    key = prefix + "tas"
    assert store.test_and_set(key, "a", "b") is False  # missing key never equals
    assert store.get(key) is None
    assert store.test_and_set(key, None, "a") is True  # None: only if missing
    assert store.test_and_set(key, None, "x") is False
    assert store.test_and_set(key, "a", "b") is True and store.get(key) == "b"
    assert store.test_and_set(key, "a", "c") is False and store.get(key) == "b"


@pytest.mark.parametrize("op,operand,holds", [("=", "m", True), ("!=", "m", False),
                                              ("<", "n", True), (">", "n", False), (">", "a", True)])
def test_transaction_branches(store, prefix, op, operand, holds):
    store.store(prefix + "k", "m")
    result = store.transaction(prefix + "k", op, operand, prefix + "then", "T", prefix + "else", "E")
    assert result is holds
    assert store.get(prefix + "then") == ("T" if holds else None)
    assert store.get(prefix + "else") == (None if holds else "E")


def test_transaction_missing_key_and_bad_op(store, prefix):
    assert store.transaction(prefix + "nope", "!=", "x", prefix + "t", "T", prefix + "e", "E") is False
    assert store.get(prefix + "e") == "E" and store.get(prefix + "t") is None
    assert store.transaction(prefix + "nope", "=", "x", prefix + "t", "T", None, "") is False
    with pytest.raises(ValueError):
        store.transaction(prefix + "k", "~", "x", prefix + "t", "T", prefix + "e", "E")


def test_temp_key_lives_with_the_handle(backend_url, other_store, prefix):
    owner = kvmod.open(backend_url, timeout=5, session_ttl=5)
    owner.temp_key(prefix + "member")
    owner.temp_key(prefix + "named", "hello")
    entry = other_store.get_kv(prefix + "member")
    assert entry.lease and entry.value.decode() == f"{entry.lease:x}"
    assert other_store.get(prefix + "named") == "hello"
    assert other_store.get_kv(prefix + "named").lease == entry.lease
    owner.close()
    assert other_store.get(prefix + "member") is None  # revoked at once
    assert other_store.get(prefix + "named") is None
    owner.close()  # twice is fine


@pytest.mark.slow  # seconds of real time: left out of the fast part (-m "not slow")
def test_temp_keys_come_back_after_a_lease_loss(store, other_store, prefix):
    store.temp_key(prefix + "t", "v")
    store.temp_key(prefix + "gone", "v")
    store.delete(prefix + "gone")  # deleted: must not be re-created
    lost = store.get_kv(prefix + "t").lease
    other_store.backend.lease_revoke(lost)
    assert other_store.get(prefix + "t") is None
    wait_until(lambda: other_store.get(prefix + "t") == "v", timeout=8, message="temp key re-created")
    assert other_store.get_kv(prefix + "t").lease != lost
    assert other_store.get(prefix + "gone") is None


def test_lock_try_lock_timeout_and_release(store, other_store):
    name = f"l-{time.monotonic_ns()}"
    with store.lock(name) as held:
        assert held.is_held() and held.token > 0
        assert other_store.try_lock(name) is None
        started = time.monotonic()
        with pytest.raises(LockTimeout):
            other_store.lock(name, timeout=0.4)
        assert time.monotonic() - started >= 0.4
    assert not held.is_held()
    second = other_store.try_lock(name)
    assert second is not None and second.token > held.token
    second.release()
    with pytest.raises(ValueError):
        store.lock("a/b")


def test_lock_is_exclusive_between_threads_of_one_handle(store):
    name = f"l-{time.monotonic_ns()}"
    held = store.lock(name)
    other_thread = []
    thread = threading.Thread(target=lambda: other_thread.append(store.try_lock(name)))
    thread.start()
    thread.join(10)
    assert other_thread == [None]
    with pytest.raises(LockReentry):  # not re-entrant: the holder can't take it again
        store.try_lock(name)
    with pytest.raises(LockReentry):
        store.lock(name, timeout=1)
    got = []
    thread = threading.Thread(target=lambda: got.append(store.lock(name, timeout=10)))
    thread.start()
    time.sleep(0.3)
    assert got == []
    held.release()
    thread.join(10)
    assert got and got[0].token > held.token
    got[0].release()
    with pytest.raises(LockNotHeld):  # no silent double unlock
        got[0].release()


def test_lock_released_when_the_handle_closes(backend_url, other_store):
    name = f"l-{time.monotonic_ns()}"
    owner = kvmod.open(backend_url, timeout=5, session_ttl=5)
    owner.lock(name)
    assert other_store.try_lock(name) is None
    owner.close()
    again = other_store.lock(name, timeout=3)
    again.release()


def test_watch_put_delete_and_timeout(store, other_store, prefix):
    key = prefix + "w"
    later(0.3, lambda: other_store.store(key, "new"))
    assert store.watch(key, timeout=10) == ("new", KeyChange.PUT)
    later(0.3, lambda: other_store.delete(key))
    assert store.watch(key, timeout=10) == (None, KeyChange.DELETE)
    started = time.monotonic()
    assert store.watch(key, timeout=0.3) is None
    assert time.monotonic() - started >= 0.3


def test_watch_callback_in_order_and_stops_on_delete(store, other_store, prefix):
    key = prefix + "cb"
    seen = queue.Queue()
    handle = store.watch_callback(key, lambda k, v, change: seen.put((k, v, change)))
    for i in range(5):
        other_store.store(key, str(i))
    other_store.store(prefix + "cbx", "not mine")  # a key that merely starts with ours
    other_store.delete(key)
    assert handle.wait(5), "the watcher stops after the key is deleted"
    events = [seen.get_nowait() for _ in range(seen.qsize())]
    assert events == [(key, str(i), KeyChange.PUT) for i in range(5)] + [(key, None, KeyChange.DELETE)]
    assert not handle.active


def test_watch_callback_op_filter_and_false_stops(store, other_store, prefix):
    key = prefix + "f"
    deletes = queue.Queue()
    only_deletes = store.watch_callback(key, lambda k, v, c: deletes.put(c), op=KeyChange.DELETE)
    puts = queue.Queue()
    stop_after_two = store.watch_callback(key, lambda k, v, c: puts.put(v) or puts.qsize() < 2,
                                          op=KeyChange.PUT)
    for value in ("a", "b", "c"):
        other_store.store(key, value)
    assert stop_after_two.wait(5)
    assert [puts.get_nowait() for _ in range(puts.qsize())] == ["a", "b"]
    assert deletes.empty() and only_deletes.active
    other_store.delete(key)
    assert deletes.get(timeout=5) is KeyChange.DELETE
    assert only_deletes.wait(5)


def test_watch_callback_cancel(store, other_store, prefix):
    key = prefix + "c"
    seen = queue.Queue()
    handle = store.watch_callback(key, lambda k, v, c: seen.put(v))
    other_store.store(key, "1")
    assert seen.get(timeout=5) == "1"
    handle.cancel()
    assert not handle.active
    other_store.store(key, "2")
    time.sleep(0.3)
    assert seen.empty()
    handle.cancel()  # twice is fine


def test_close_stops_watchers_and_wrapping_a_backend(backend_url, prefix):
    backend = open_backend(backend_url, timeout=5)
    facade = KV(backend, session_ttl=5)
    handle = facade.watch_callback(prefix + "k", lambda *a: None)
    facade.close()
    assert not handle.active
    assert backend.get(prefix + "k") is None  # a wrapped backend stays open
    backend.close()


# --- 004's watch: wakes on a changed value, a creation or a deletion only -------------------
def collect(store, key, **options):
    seen = queue.Queue()
    handle = store.watch_callback(key, lambda k, v, change: seen.put((v, change)), **options)
    return seen, handle


def drain(seen):
    return [seen.get_nowait() for _ in range(seen.qsize())]


def test_watch_callback_skips_rewrites_of_the_same_value_by_default(store, other_store, prefix):
    key = prefix + "same"
    other_store.store(key, "a")
    changes, changes_handle = collect(store, key)
    writes, writes_handle = collect(store, key, every_write=True)
    for value in ("a", "a", "b", "b", "a"):
        other_store.store(key, value)
    other_store.delete(key)
    assert changes_handle.wait(5) and writes_handle.wait(5)
    assert drain(changes) == [("b", KeyChange.PUT), ("a", KeyChange.PUT), (None, KeyChange.DELETE)]
    assert drain(writes) == [(v, KeyChange.PUT) for v in ("a", "a", "b", "b", "a")] + [
        (None, KeyChange.DELETE)]


def test_watch_callback_reports_creation_even_of_an_empty_value(store, other_store, prefix):
    key = prefix + "created"
    seen, handle = collect(store, key)
    other_store.store(key, "")
    other_store.store(key, "")  # same value again: not a change
    other_store.delete(key)
    other_store.store(key, "")  # re-created: a change
    assert seen.get(timeout=5) == ("", KeyChange.PUT)
    assert seen.get(timeout=5) == (None, KeyChange.DELETE)
    assert handle.wait(5)  # stops at the delete (after reporting it)
    assert drain(seen) == []


@pytest.mark.slow  # seconds of real time: left out of the fast part (-m "not slow")
def test_blocking_watch_ignores_a_rewrite_unless_every_write(store, other_store, prefix):
    key = prefix + "blocking"
    other_store.store(key, "x")

    def rewrite_then_change():
        other_store.store(key, "x")
        time.sleep(0.2)
        other_store.store(key, "y")

    later(0.3, rewrite_then_change)
    started = time.monotonic()
    assert store.watch(key, timeout=10) == ("y", KeyChange.PUT)
    assert time.monotonic() - started >= 0.45, "woke on the rewrite"
    later(0.3, lambda: other_store.store(key, "y"))
    assert store.watch(key, timeout=10, every_write=True) == ("y", KeyChange.PUT)
    later(0.3, lambda: other_store.store(key, "y"))
    assert store.watch(key, timeout=1) is None  # a rewrite alone never wakes the default watch


# --- 004's timed lock: the store releases it, the holder learns it --------------------------
@pytest.mark.slow  # seconds of real time: left out of the fast part (-m "not slow")
def test_lock_max_hold_released_by_the_store(store, other_store):
    name = f"timed-{time.monotonic_ns()}"
    reasons = []
    held = store.lock(name, max_hold=2, on_lost=reasons.append)
    held_at = time.monotonic()
    assert not held.lost and held.expires_at <= held_at + 2
    taken = other_store.lock(name, timeout=10)
    waited = time.monotonic() - held_at
    assert 1.5 <= waited <= 4.0, f"released {waited:.2f}s after acquisition"
    assert taken.token > held.token
    assert held.lock.wait_lost(5) and held.lost and reasons and "max hold" in reasons[0]
    assert not held.is_held()
    with pytest.raises(LockLost):
        with held:
            pass  # leaving the block releases: the overrun is reported
    taken.release()
