"""The distributed lock recipe, on the memory backend and on real etcd."""

import threading
import time

import pytest

from etcdvisor.coord import open_backend
from etcdvisor.coord.session import Session
from etcdvisor.coord.types import Put, create_revision
from etcdvisor.recipes.lock import Lock, LockLost, LockNotHeld, LockReentry, LockState

from ..conftest import wait_until


def keys_under(backend, prefix):
    return [kv.key for kv in backend.get_prefix(prefix).kvs]


def test_acquire_release_token_and_key_layout(backend, prefix):
    session = Session(backend, 5).start()
    lock = Lock(backend, prefix + "job", session=session)
    assert lock.token is None and not lock.is_held()
    assert lock.acquire() is True
    assert lock.key == f"{prefix}job/{session.lease_id:x}"
    kv = backend.get(lock.key)
    assert kv.lease == session.lease_id and lock.token == kv.create_revision
    assert lock.is_held() and lock.holder().key == lock.key
    lock.release()
    assert lock.token is None and not lock.is_held()
    assert keys_under(backend, prefix) == []
    with pytest.raises(RuntimeError):
        lock.release()
    with lock:
        assert lock.is_held()
    assert keys_under(backend, prefix) == []
    session.close()


def test_own_session_is_revoked_on_release(backend, prefix):
    lock = Lock(backend, prefix + "solo", ttl=5)
    with lock:
        lease = backend.get(lock.key).lease
        assert lease and backend.lease_ttl(lease) > 0
    assert backend.lease_ttl(lease) == -1
    assert keys_under(backend, prefix) == []


@pytest.mark.slow  # seconds of real time: left out of the fast part (-m "not slow")
def test_mutual_exclusion_and_increasing_tokens(backend_url, prefix):
    shared = {"value": 0}
    tokens = []
    errors = []
    rounds = 50

    def worker():
        handle = open_backend(backend_url, timeout=5)
        session = Session(handle, 5).start()
        try:
            lock = Lock(handle, prefix + "counter", session=session)
            for _ in range(rounds):
                with lock:
                    tokens.append(lock.token)
                    current = shared["value"]  # read-modify-write, racy without the lock
                    time.sleep(0.001)
                    shared["value"] = current + 1
        except Exception as exc:  # surfaced below
            errors.append(exc)
        finally:
            session.close()
            handle.close()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    assert not errors
    assert shared["value"] == 4 * rounds
    assert len(tokens) == 4 * rounds
    assert all(a < b for a, b in zip(tokens, tokens[1:])), "tokens must strictly increase"


def test_try_lock_fails_while_held_and_leaves_no_waiter_key(backend, other_backend, prefix):
    holder = Lock(backend, prefix + "l", ttl=5)
    assert holder.acquire()
    contender = Lock(other_backend, prefix + "l", ttl=5)
    assert contender.acquire(blocking=False) is False
    assert contender.token is None
    assert keys_under(backend, prefix) == [holder.key]
    holder.release()
    assert contender.acquire(blocking=False) is True
    contender.release()


def test_timeout_returns_false_and_deletes_waiter_key(backend, other_backend, prefix):
    holder = Lock(backend, prefix + "l", ttl=5)
    holder.acquire()
    contender = Lock(other_backend, prefix + "l", ttl=5)
    started = time.monotonic()
    assert contender.acquire(timeout=0.5) is False
    assert time.monotonic() - started >= 0.5
    assert keys_under(backend, prefix) == [holder.key]
    with pytest.raises(ValueError):
        contender.acquire(blocking=False, timeout=1)
    holder.release()


def in_thread(action):
    """Run ``action`` on another thread and return its result."""
    result = []
    thread = threading.Thread(target=lambda: result.append(action()))
    thread.start()
    thread.join(30)
    return result[0]


def test_sessions_shared_in_process_are_serialized(backend, prefix):
    session = Session(backend, 5).start()
    first = Lock(backend, prefix + "l", session=session)
    second = Lock(backend, prefix + "l", session=session)
    assert first.acquire()
    # same lease, same key: another thread is guarded locally
    assert in_thread(lambda: second.acquire(blocking=False)) is False
    assert in_thread(lambda: second.acquire(timeout=0.3)) is False
    first.release()
    assert second.acquire(timeout=2)
    assert second.token > 0
    second.release()
    session.close()


def test_reentry_and_double_unlock_are_clear_errors(backend, prefix):
    """hms-hmetcd's lock 'acquires' twice and unlocks silently; ours refuses both."""
    session = Session(backend, 5).start()
    lock = Lock(backend, prefix + "l", session=session)
    same_name = Lock(backend, prefix + "l", session=session)
    assert lock.acquire()
    for attempt in (lock.acquire, lambda: lock.acquire(blocking=False), same_name.acquire):
        with pytest.raises(LockReentry):
            attempt()
    assert lock.is_held() and lock.state is LockState.HELD
    lock.release()
    with pytest.raises(LockNotHeld):
        lock.release()
    with pytest.raises(RuntimeError):  # LockNotHeld is a RuntimeError, as before
        same_name.release()
    assert keys_under(backend, prefix) == []
    assert same_name.acquire(timeout=2)  # nothing left locked by the refused attempts
    same_name.release()
    session.close()


def test_waiters_get_the_lock_in_enqueue_order(backend_url, backend, prefix):
    name = prefix + "queue"
    holder = Lock(backend, name, ttl=5)
    holder.acquire()
    order = []
    handles = []
    threads = []
    for index in range(3):
        handle = open_backend(backend_url, timeout=5)
        handles.append(handle)
        lock = Lock(handle, name, ttl=5)

        def wait_and_record(lock=lock, index=index):
            with lock:
                order.append((index, lock.token))
                time.sleep(0.05)

        thread = threading.Thread(target=wait_and_record)
        thread.start()
        threads.append(thread)
        wait_until(lambda: len(keys_under(backend, name)) == index + 2, message=f"waiter {index} queued")
    holder.release()
    for thread in threads:
        thread.join(30)
    assert [index for index, _ in order] == [0, 1, 2]
    assert [token for _, token in order] == sorted(token for _, token in order)
    for handle in handles:
        handle.close()


def test_revoking_the_holders_lease_frees_the_next_waiter(backend, other_backend, prefix):
    session = Session(backend, 30).start()
    holder = Lock(backend, prefix + "l", session=session)
    holder.acquire()
    waiter = Lock(other_backend, prefix + "l", ttl=5)
    acquired = threading.Event()

    def wait():
        if waiter.acquire(timeout=20):
            acquired.set()

    thread = threading.Thread(target=wait)
    thread.start()
    wait_until(lambda: len(keys_under(backend, prefix)) == 2, message="waiter queued")
    assert not acquired.wait(0.3)
    backend.lease_revoke(session.lease_id)  # the holder "dies"
    assert acquired.wait(5)
    assert not holder.is_held()
    assert holder.state is LockState.LOST and holder.token is None
    assert waiter.token > holder._hold.entry.token
    thread.join(5)
    waiter.release()
    session.close()


def test_waiter_whose_key_vanishes_raises_lock_lost(backend, other_backend, prefix):
    holder = Lock(backend, prefix + "l", ttl=5)
    holder.acquire()
    waiter_session = Session(other_backend, 30).start()
    waiter = Lock(other_backend, prefix + "l", session=waiter_session)
    outcome = []

    def wait():
        try:
            outcome.append(waiter.acquire(timeout=20))
        except LockLost as exc:
            outcome.append(exc)

    thread = threading.Thread(target=wait)
    thread.start()
    wait_until(lambda: len(keys_under(backend, prefix)) == 2, message="waiter queued")
    backend.lease_revoke(waiter_session.lease_id)  # the waiter's own key goes
    holder.release()  # wakes the waiter, which must notice its key is gone
    thread.join(10)
    assert len(outcome) == 1 and isinstance(outcome[0], LockLost)
    waiter_session.close()


def test_a_release_wakes_only_the_next_waiter_and_nobody_polls(backend_url, backend, prefix):
    """Each waiter watches its predecessor only: releasing the lock makes
    exactly one waiter read the queue again, and waiting reads nothing."""
    name = prefix + "herd"
    holder = Lock(backend, name, ttl=5)
    holder.acquire()
    reads = [0, 0, 0]
    proceed = threading.Event()
    handles, threads, acquired = [], [], []
    for index in range(3):
        handle = open_backend(backend_url, timeout=5)
        handles.append(handle)
        original = handle.get_prefix

        def counting(*args, _original=original, _index=index, **kwargs):
            reads[_index] += 1
            return _original(*args, **kwargs)

        handle.get_prefix = counting  # instance attribute: what Lock calls
        lock = Lock(handle, name, ttl=5)

        def wait(lock=lock, index=index):
            with lock:
                acquired.append(index)
                proceed.wait(10)

        threads.append(threading.Thread(target=wait))
        threads[-1].start()
        wait_until(lambda: len(keys_under(backend, name)) == index + 2, message=f"waiter {index} queued")
    time.sleep(0.5)  # a polling waiter would read again meanwhile
    assert reads == [1, 1, 1]
    holder.release()
    wait_until(lambda: acquired == [0], message="first waiter acquires")
    time.sleep(0.3)
    assert reads == [2, 1, 1]
    proceed.set()
    for thread in threads:
        thread.join(10)
    assert acquired == [0, 1, 2]
    for handle in handles:
        handle.close()


# --- maximum hold time (hms-hmetcd's timed lock) ------------------------------------------
MAX_HOLD = 2


@pytest.mark.slow  # seconds of real time: left out of the fast part (-m "not slow")
def test_max_hold_store_releases_next_waiter_acquires_holder_learns(backend, other_backend, prefix):
    name = prefix + "timed"
    losses = []
    session = Session(backend, 10).start()
    holder = Lock(backend, name, session=session, max_hold=MAX_HOLD,
                  on_lost=lambda reason: losses.append((time.monotonic(), reason)))
    assert holder.acquire()
    held_at = time.monotonic()
    token, key = holder.token, holder.key
    kv = backend.get(key)
    assert kv.create_revision == token, "moving to the hold lease keeps the place and the token"
    assert kv.lease != session.lease_id and 0 < backend.lease_ttl(kv.lease) <= MAX_HOLD
    assert holder.expires_at is not None and holder.expires_at <= held_at + MAX_HOLD

    waiter = Lock(other_backend, name, ttl=5)
    assert waiter.acquire(timeout=MAX_HOLD + 10), "the store never released the timed lock"
    acquired_at = time.monotonic()
    waited = acquired_at - held_at
    assert MAX_HOLD - 0.5 <= waited <= MAX_HOLD + 2.0, f"released {waited:.2f}s after acquisition"
    assert holder.expires_at <= acquired_at, "the holder's deadline must pass before anyone else holds"
    assert waiter.token > token

    assert holder.wait_lost(5) and holder.lost
    assert len(losses) == 1 and "max hold" in losses[0][1]
    assert holder.state is LockState.LOST and holder.token is None and not holder.is_held()
    # a write fenced by the old token no longer goes through
    fenced = backend.txn([create_revision(key, "=", token)], [Put(prefix + "guarded", b"late")])
    assert not fenced.succeeded and backend.get(prefix + "guarded") is None
    with pytest.raises(LockLost):
        holder.release()  # the holder overran: told so, and cleaned up
    assert holder.state is LockState.UNLOCKED
    with pytest.raises(LockNotHeld):
        holder.release()
    assert [kv.key for kv in backend.get_prefix(name + "/").kvs] == [waiter.key]
    waiter.release()
    assert len(losses) == 1
    session.close()


def test_max_hold_release_in_time_is_quiet_and_revokes_the_hold_lease(backend, prefix):
    losses = []
    lock = Lock(backend, prefix + "quick", ttl=5, max_hold=MAX_HOLD, on_lost=losses.append)
    with lock:
        hold_lease = backend.get(lock.key).lease
        assert backend.lease_ttl(hold_lease) > 0
    assert backend.lease_ttl(hold_lease) == -1 and keys_under(backend, prefix) == []
    time.sleep(0.3)
    assert losses == [] and not lock.lost
    # the lock can be taken again, with a fresh deadline
    assert lock.acquire(timeout=2) and not lock.lost
    lock.release()
    with pytest.raises(ValueError):
        Lock(backend, prefix + "bad", max_hold=0)


def test_on_lost_reports_a_revoked_lease_without_max_hold(backend, prefix):
    session = Session(backend, 10).start()
    reasons = []
    lock = Lock(backend, prefix + "watched", session=session, on_lost=reasons.append)
    assert lock.acquire()
    backend.lease_revoke(session.lease_id)
    wait_until(lambda: reasons, message="on_lost called")
    # which of the two observers (the key's watch, the session) reports first is a race
    assert lock.lost and lock.token is None
    assert "deleted" in reasons[0] or "lease expired or revoked" in reasons[0], reasons
    with pytest.raises(LockLost):
        lock.release()
    session.close()


def test_mutual_exclusion_holds_on_the_max_hold_path(backend_url, prefix):
    """Under contention, every hold moves to its own hold lease: still one
    holder at a time, tokens still strictly increase, nothing left behind."""
    inside, overlaps, tokens, errors = [0], [], [], []
    guard = threading.Lock()

    def worker():
        handle = open_backend(backend_url, timeout=5)
        try:
            lock = Lock(handle, prefix + "timed-counter", ttl=5, max_hold=30)
            for _ in range(8):
                with lock:
                    with guard:
                        inside[0] += 1
                        overlaps.append(inside[0])
                        tokens.append(lock.token)
                    time.sleep(0.002)
                    with guard:
                        inside[0] -= 1
        except Exception as exc:  # surfaced below
            errors.append(exc)
        finally:
            handle.close()

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    assert not errors and len(tokens) == 24
    assert max(overlaps) == 1, "two holders at once"
    assert all(a < b for a, b in zip(tokens, tokens[1:]))
    with open_backend(backend_url, timeout=5) as check:
        assert check.get_prefix(prefix + "timed-counter/").kvs == ()
