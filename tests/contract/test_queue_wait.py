"""The queue-wait protocol shared by lock and election (recipes/queue_wait.py),
on the memory backend and on real etcd."""

import threading
import time

import pytest

from etcdvisor.recipes import election as election_module
from etcdvisor.recipes import lock as lock_module
from etcdvisor.recipes.queue_wait import EntryLost, WaitOutcome, WaitQueue


def grant(backend, ttl=10):
    return backend.lease_grant(ttl).id


def test_enqueue_is_idempotent_per_lease_and_orders_by_create_revision(backend, prefix):
    line = WaitQueue(backend, prefix + "q")
    first_lease, second_lease = grant(backend), grant(backend)
    second = line.enqueue(second_lease, b"b")  # the later lease id enqueues first: order is by revision
    first = line.enqueue(first_lease, b"a")
    assert line.enqueue(second_lease, b"other") == second  # same lease: same key, same place
    assert backend.get(second.key).value == b"b"
    assert line.head().key == second.key
    assert line.predecessor(second)[0] is None
    assert line.predecessor(first)[0].key == second.key
    backend.put(prefix + "q/deeper/x", b"")  # not a direct child: not in line
    assert [kv.key for kv in line.contenders(backend.get_prefix(prefix + "q/").kvs)] == [second.key, first.key]
    assert line.withdraw(second) and not line.withdraw(second)
    assert line.wait_turn(first, blocking=False) is WaitOutcome.HEAD


def test_wait_turn_outcomes_head_timeout_cancel_and_entry_lost(backend, other_backend, prefix):
    line = WaitQueue(backend, prefix + "q")
    holder = line.enqueue(grant(backend))
    waiter = WaitQueue(other_backend, prefix + "q").enqueue(grant(other_backend))
    assert line.wait_turn(waiter, blocking=False) is WaitOutcome.TIMED_OUT
    started = time.monotonic()
    assert line.wait_turn(waiter, deadline=time.monotonic() + 0.4) is WaitOutcome.TIMED_OUT
    assert time.monotonic() - started >= 0.4
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    assert line.wait_turn(waiter, cancel=cancel) is WaitOutcome.CANCELLED
    threading.Timer(0.3, lambda: line.withdraw(holder)).start()
    assert line.wait_turn(waiter, deadline=time.monotonic() + 10) is WaitOutcome.HEAD
    other_backend.lease_revoke(waiter.lease)
    with pytest.raises(EntryLost):
        line.wait_turn(waiter)


def test_a_predecessor_leaving_mid_line_does_not_skip_the_head(backend, prefix):
    """Waiting on the predecessor, not the head: when the one before us leaves
    while the head stays, we look again and wait on the head."""
    line = WaitQueue(backend, prefix + "q")
    head, middle, last = (line.enqueue(grant(backend)) for _ in range(3))
    outcome = []
    thread = threading.Thread(target=lambda: outcome.append(line.wait_turn(last, deadline=time.monotonic() + 10)))
    thread.start()
    time.sleep(0.3)
    line.withdraw(middle)
    time.sleep(0.3)
    assert outcome == [], "the head still holds"
    line.withdraw(head)
    thread.join(10)
    assert outcome == [WaitOutcome.HEAD]


def test_lock_and_election_share_the_one_protocol():
    """GUIDE: a protocol is written once. Neither recipe opens watches of its
    own for waiting; both go through WaitQueue."""
    for module in (lock_module, election_module):
        source = open(module.__file__).read()
        assert "WaitQueue(" in source
        assert ".watch(" not in source, f"{module.__name__} watches by itself"
