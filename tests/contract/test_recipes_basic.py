"""Counter, wait group, keep-alive node and id generator on both backends."""

import threading
import time

import pytest

from etcdvisor.coord import open_backend
from etcdvisor.coord.session import Session
from etcdvisor.recipes.counter import BadCounterValue, Contention, Counter
from etcdvisor.recipes.ids import EPOCH, ClockMovedBackwards, IdGenerator, NoMachineId, decompose
from etcdvisor.recipes.keepalive import KeepAliveNode, NodeState
from etcdvisor.recipes.waitgroup import WaitGroup, WaitGroupNegative

from ..conftest import wait_until


def run_threads(target, count):
    errors = []

    def guarded(i):
        try:
            target(i)
        except BaseException as exc:  # surfaced to the test below
            errors.append(exc)
    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors[0]


# --- counter ---------------------------------------------------------------------

def test_counter_basic_operations(backend, prefix):
    counter = Counter(backend, prefix + "c")
    assert counter.get() == 0  # missing key reads 0
    assert counter.inc() == 1
    assert counter.inc(5) == 6
    assert counter.dec(2) == 4
    assert counter.dec() == 3
    assert backend.get(prefix + "c").value == b"3"  # canonical decimal
    assert counter.compare_and_set(3, 10) is True
    assert counter.compare_and_set(3, 11) is False
    assert counter.get() == 10
    counter.set(-7)
    assert counter.get() == -7
    assert Counter(backend, prefix + "fresh").compare_and_set(0, 1) is True  # missing == 0


def test_counter_rejects_garbage(backend, prefix):
    backend.put(prefix + "c", "not a number")
    counter = Counter(backend, prefix + "c")
    with pytest.raises(BadCounterValue, match="not a decimal integer"):
        counter.inc()
    assert backend.get(prefix + "c").value == b"not a number"
    with pytest.raises(TypeError):
        counter.inc(1.5)


@pytest.mark.slow  # seconds of real time: left out of the fast part (-m "not slow")
def test_counter_is_atomic_under_contention(backend_url, backend, prefix):
    key = prefix + "hot"
    threads, per_thread = 8, 500
    handles = [open_backend(backend_url, timeout=5) for _ in range(threads)]
    started = time.monotonic()
    try:
        run_threads(lambda i: [Counter(handles[i], key).inc() for _ in range(per_thread)], threads)
    finally:
        for handle in handles:
            handle.close()
    elapsed = time.monotonic() - started
    assert Counter(backend, key).get() == threads * per_thread
    assert elapsed < 40, f"{threads * per_thread} contended increments took {elapsed:.1f}s"


def test_counter_gives_up_after_bounded_attempts(backend, prefix):
    key = prefix + "c"
    counter = Counter(backend, key, max_attempts=3)
    calls = []

    def meddle(current):  # another writer changes the key before every attempt lands
        calls.append(current)
        backend.put(key, str(current + 100))
        return current + 1
    with pytest.raises(Contention, match="gave up after 3"):
        counter.update(meddle)
    assert len(calls) == 3


# --- wait group ----------------------------------------------------------------------

def test_waitgroup_add_done_and_negative(backend, prefix):
    group = WaitGroup(backend, prefix + "wg")
    assert group.count() == 0
    assert group.wait(timeout=0) is True  # zero: returns at once
    group.add(2)
    assert group.done() == 1
    assert group.done() == 0
    revision = backend.revision()
    with pytest.raises(WaitGroupNegative, match="would be negative"):
        group.done()
    assert backend.revision() == revision  # nothing written
    with pytest.raises(WaitGroupNegative):
        group.add(-1)
    assert group.count() == 0


def test_waitgroup_wait_times_out_then_every_waiter_returns(backend, other_backend, prefix):
    key = prefix + "wg"
    WaitGroup(backend, key).add(3)
    started = time.monotonic()
    assert WaitGroup(backend, key).wait(timeout=0.3) is False
    assert time.monotonic() - started >= 0.25
    results = []

    def waiter(i):
        results.append(WaitGroup(backend, key).wait(timeout=20))
    waiters = [threading.Thread(target=waiter, args=(i,)) for i in range(3)]
    for thread in waiters:
        thread.start()
    worker = WaitGroup(other_backend, key)
    for _ in range(3):
        time.sleep(0.05)
        worker.done()
    worker.add(1)  # going up again right after zero must not strand anyone
    for thread in waiters:
        thread.join(20)
    assert results == [True, True, True]


def test_waitgroup_returns_when_key_deleted(backend, other_backend, prefix):
    group = WaitGroup(backend, prefix + "wg")
    group.add(1)
    timer = threading.Timer(0.2, lambda: WaitGroup(other_backend, prefix + "wg").delete())
    timer.start()
    assert group.wait(timeout=10) is True
    timer.join()


# --- keep-alive node -------------------------------------------------------------------

@pytest.mark.slow  # seconds of real time: left out of the fast part (-m "not slow")
def test_keepalive_node_lives_and_stops(backend, other_backend, prefix):
    key = prefix + "node"
    with KeepAliveNode(backend, key, b"here", ttl=2, interval=0.2) as node:
        assert node.state is NodeState.RUNNING and node.alive
        kv = other_backend.get(key)
        assert kv.value == b"here" and kv.lease == node.lease_id
        time.sleep(2.5)  # longer than the TTL: the session keeps it
        assert other_backend.get(key) is not None
    assert node.state is NodeState.STOPPED
    assert other_backend.get(key) is None  # revoked at once


def test_keepalive_node_recreated_after_lease_loss(backend, other_backend, prefix):
    key = prefix + "node"
    node = KeepAliveNode(backend, key, b"v", ttl=3, interval=0.2).start()
    old_lease = node.lease_id
    other_backend.lease_revoke(old_lease)  # someone kills our lease
    assert other_backend.get(key) is None
    wait_until(lambda: (kv := other_backend.get(key)) is not None and kv.lease != old_lease,
               timeout=5, message="key re-created on a new lease")
    # the state follows the put on the re-creating thread (a loaded machine may run the
    # test between the two): it must get there, and stay there
    wait_until(lambda: node.state is NodeState.RUNNING, timeout=5, message="node RUNNING again")
    time.sleep(0.3)
    assert node.state is NodeState.RUNNING and other_backend.get(key).lease == node.lease_id
    node.stop()
    node.stop()  # twice is fine
    assert other_backend.get(key) is None


# --- ids ------------------------------------------------------------------------------------

@pytest.fixture
def session(backend):
    session = Session(backend, ttl=5, interval=0.2, name="ids").start()
    yield session
    session.close()


def test_ids_strictly_increase_and_decompose(backend, prefix, session):
    with IdGenerator(backend, prefix, session) as generator:
        machine = generator.machine_id
        assert 0 <= machine <= 0xFFFF
        assert backend.get(f"{prefix}machines/{machine:05d}").lease == session.lease_id
        before = time.time()
        ids = [generator.next_id() for _ in range(1000)]  # > 256 per 10 ms: must wait
        assert ids == sorted(ids) and len(set(ids)) == len(ids)
        assert all(0 < i < 2**63 for i in ids)
        first = decompose(ids[0])
        assert first.machine == machine
        assert before - 0.02 <= first.time <= time.time() + 0.01
        assert max(decompose(i).sequence for i in ids) <= 255
        assert (ids[-1] >> 24) - (ids[0] >> 24) >= 3  # 1000 ids need >= 4 units of 10 ms
    assert backend.get(f"{prefix}machines/{machine:05d}") is None  # released


def test_ids_are_unique_across_threads_and_generators(backend, other_backend, prefix, session):
    other_session = Session(other_backend, ttl=5, interval=0.2, name="ids2").start()
    first = IdGenerator(backend, prefix, session)
    second = IdGenerator(other_backend, prefix, other_session)
    assert first.machine_id != second.machine_id
    produced = [[] for _ in range(4)]
    generators = [first, first, second, second]
    run_threads(lambda i: produced[i].extend(generators[i].next_id() for _ in range(300)), 4)
    everything = [i for chunk in produced for i in chunk]
    assert len(set(everything)) == len(everything)
    for chunk in produced:
        assert chunk == sorted(chunk)
    first.close()
    second.close()
    other_session.close()


def test_ids_stop_when_lease_lost_and_resume_with_new_claim(backend, other_backend, prefix, session):
    generator = IdGenerator(backend, prefix, session)
    old_lease = session.lease_id
    last = generator.next_id()
    other_backend.lease_revoke(old_lease)
    wait_until(lambda: session.lease_id != old_lease, timeout=5, message="new lease")
    wait_until(lambda: generator.machine_id is not None, timeout=5, message="machine id re-claimed")
    assert generator.next_id() > last
    key = f"{prefix}machines/{generator.machine_id:05d}"
    assert other_backend.get(key).lease == session.lease_id
    generator.close()


def test_ids_raise_without_machine_id(backend, prefix, session):
    generator = IdGenerator(backend, prefix, session)
    session.close()  # no live lease any more
    with pytest.raises(NoMachineId):
        generator.next_id()
    generator.close()


def test_ids_wait_for_clock_going_backwards(backend, prefix, session):
    now = [EPOCH + 1000.0]
    generator = IdGenerator(backend, prefix, session, clock=lambda: now[0])
    last = generator.next_id()
    now[0] -= 5.0  # far behind: refuse
    with pytest.raises(ClockMovedBackwards, match="behind"):
        generator.next_id()
    now[0] += 5.0 - 0.05  # 50 ms behind: wait, and the clock catches up
    timer = threading.Timer(0.1, lambda: now.__setitem__(0, now[0] + 0.06))
    timer.start()
    assert generator.next_id() > last
    timer.join()
    generator.close()
