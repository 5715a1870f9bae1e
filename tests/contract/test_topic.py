"""Topic pub/sub (broadcast and queue mode) on both backends."""

import logging
import threading
import time

import pytest

from etcdvisor.coord.session import Session
from etcdvisor.recipes.topic import Message, PayloadTooLarge, QueueConsumer, Topic

from ..conftest import wait_until


def receive(subscription, count, timeout=10.0):
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        message = subscription.get(timeout=max(0.0, deadline - time.monotonic()))
        if message is not None:
            got.append(message)
    return got


@pytest.fixture
def sessions(backend, other_backend):
    made = [Session(backend, ttl=5, interval=0.2, name="a").start(),
            Session(other_backend, ttl=5, interval=0.2, name="b").start()]
    yield made
    for session in made:
        session.close()


def test_publish_ids_strictly_increase_across_publishers(backend, other_backend, prefix):
    first, second = Topic(backend, prefix + "t"), Topic(other_backend, prefix + "t")
    sub = first.subscribe()
    # alternating: a publish that returned before another started has a smaller id
    ids = [(first if i % 2 else second).publish(b"%d" % i) for i in range(10)]
    assert ids == sorted(ids) and len(set(ids)) == 10
    # concurrently: each publisher's own ids increase, all ids are distinct
    per_publisher = {0: [], 1: []}

    def publish(index, topic):
        for i in range(40):
            per_publisher[index].append(topic.publish(b"p%d-%d" % (index, i)))
    threads = [threading.Thread(target=publish, args=(i, t)) for i, t in enumerate((first, second))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    for published in per_publisher.values():
        assert published == sorted(published) and len(published) == 40
    everything = ids + per_publisher[0] + per_publisher[1]
    assert len(set(everything)) == 90 and min(everything[10:]) > max(ids)
    got = receive(sub, 90)
    sub.close()
    assert [m.id for m in got] == sorted(everything)  # delivered in id order, none missing
    assert [m.seq for m in got] == list(range(1, 91))  # key order is id order
    keys = [kv.key for kv in backend.get_prefix(prefix + "t/msg/").kvs]
    created = [kv.create_revision for kv in backend.get_prefix(prefix + "t/msg/").kvs]
    assert keys == sorted(keys) and created == sorted(created)


def test_subscribe_from_now_versus_from_an_id(backend, other_backend, prefix):
    topic = Topic(backend, prefix + "t")
    old_ids = [topic.publish(b"old%d" % i) for i in range(3)]
    from_now = topic.subscribe()
    from_first = Topic(other_backend, prefix + "t").subscribe(from_id=old_ids[0])
    from_zero = topic.subscribe(from_id=0)
    new_id = topic.publish(b"new")
    now_got = receive(from_now, 1)
    assert [m.data for m in now_got] == [b"new"] and now_got[0].id == new_id
    assert from_now.get(timeout=0.2) is None  # nothing older
    assert [m.data for m in receive(from_first, 3)] == [b"old1", b"old2", b"new"]
    assert [m.data for m in receive(from_zero, 4)] == [b"old0", b"old1", b"old2", b"new"]
    message = now_got[0]
    assert isinstance(message, Message) and abs(message.published_at - time.time()) < 30
    for sub in (from_now, from_first, from_zero):
        sub.close()
    assert list(from_now) == []  # a closed subscription ends iteration


def test_resume_after_restart_without_loss(backend, other_backend, prefix):
    topic = Topic(backend, prefix + "t")
    sub = Topic(other_backend, prefix + "t").subscribe(from_id=0)
    for i in range(5):
        topic.publish(b"m%d" % i)
    processed = receive(sub, 3)
    last_acked = processed[-1].id
    sub.close()  # the subscriber "restarts"; messages keep coming meanwhile
    for i in range(5, 9):
        topic.publish(b"m%d" % i)
    resumed = Topic(other_backend, prefix + "t").subscribe(from_id=last_acked)
    rest = receive(resumed, 6)
    resumed.close()
    assert [m.data for m in processed + rest] == [b"m%d" % i for i in range(9)]


def test_retention_by_count_and_trimmed_resume_point(backend, prefix, caplog):
    topic = Topic(backend, prefix + "t", max_messages=5)
    ids = [topic.publish(b"%d" % i) for i in range(12)]
    retained = backend.get_prefix(prefix + "t/msg/").kvs
    assert [kv.value for kv in retained] == [b"%d" % i for i in range(7, 12)]
    with caplog.at_level(logging.WARNING, logger="etcdvisor.recipes.topic"):
        sub = topic.subscribe(from_id=ids[2])  # trimmed long ago
        got = receive(sub, 5)
        sub.close()
    assert [m.id for m in got] == ids[7:]
    assert "no longer retained" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="etcdvisor.recipes.topic"):
        sub = topic.subscribe(from_id=ids[8])  # still retained: no warning
        assert [m.id for m in receive(sub, 3)] == ids[9:]
        sub.close()
    assert "no longer retained" not in caplog.text


def test_retention_by_age(backend, prefix):
    now = [1_700_000_000.0]
    topic = Topic(backend, prefix + "t", retention=60, clock=lambda: now[0])
    topic.publish(b"old")
    now[0] += 30
    topic.publish(b"younger")
    now[0] += 40  # "old" is now 70 s old, "younger" 40 s
    topic.publish(b"new")  # the oldest known is due: publish trims
    assert [kv.value for kv in backend.get_prefix(prefix + "t/msg/").kvs] == [b"younger", b"new"]
    now[0] += 100
    assert topic.trim() == 2
    assert backend.get_prefix(prefix + "t/msg/").kvs == ()


def test_oversize_payload_refused_before_writing(backend, prefix):
    topic = Topic(backend, prefix + "t", max_payload=100)
    topic.publish(b"x" * 100)
    revision = backend.revision()
    with pytest.raises(PayloadTooLarge, match="payload of 101 bytes exceeds the topic's max_payload of 100"):
        topic.publish(b"x" * 101)
    assert backend.revision() == revision
    with pytest.raises(TypeError):
        topic.publish("text")


def test_slow_subscriber_is_bounded_and_loses_nothing(backend, prefix):
    topic = Topic(backend, prefix + "t")
    sub = topic.subscribe(max_buffer=4)
    topic.publish(b"warm-up")
    assert receive(sub, 1)[0].data == b"warm-up"  # the watch is live now
    for i in range(30):
        topic.publish(b"%d" % i)
    wait_until(lambda: len(sub._buffer) >= 4, timeout=5, message="buffer filled")
    time.sleep(0.2)
    # the follower suspended its watch at max_buffer (plus at most one watch batch)
    assert 4 <= len(sub._buffer) <= 8, len(sub._buffer)
    got = receive(sub, 30)
    sub.close()
    assert [m.data for m in got] == [b"%d" % i for i in range(30)]


def test_queue_two_consumers_each_message_exactly_once(backend, other_backend, prefix, sessions):
    publisher = Topic(backend, prefix + "t")
    consumers = [QueueConsumer(Topic(backend, prefix + "t"), "workers", sessions[0], name="A"),
                 QueueConsumer(Topic(other_backend, prefix + "t"), "workers", sessions[1], name="B")]
    ids = [publisher.publish(b"job%d" % i) for i in range(30)]
    processed = []
    lock = threading.Lock()

    def work(consumer):
        while True:
            with lock:
                if len(processed) >= 30:
                    return
            message = consumer.get(timeout=0.5)
            if message is None:
                continue
            time.sleep(0.01)  # some work, so both consumers take part
            with lock:
                processed.append((consumer.name, message.id, message.data))
            assert consumer.ack(message) is True
    threads = [threading.Thread(target=work, args=(c,)) for c in consumers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(m_id for _, m_id, _ in processed) == ids  # each exactly once
    assert {name for name, _, _ in processed} == {"A", "B"}
    assert all(c.get(timeout=0.3) is None for c in consumers)  # nothing redelivered
    assert backend.get_prefix(prefix + "t/claims/").kvs == ()
    assert len(backend.get_prefix(prefix + "t/done/workers/").kvs) == 30
    # another group sees the whole retained backlog independently
    audit = QueueConsumer(publisher, "audit", sessions[0])
    assert sorted(audit.get(timeout=5).id for _ in range(30)) == ids
    for consumer in consumers + [audit]:
        consumer.close()


def test_queue_message_redelivered_when_claim_lease_revoked(backend, other_backend, prefix, sessions):
    topic = Topic(backend, prefix + "t")
    first = QueueConsumer(topic, "g", sessions[0], name="first")
    message_id = topic.publish(b"job")
    message = first.get(timeout=5)
    assert message.id == message_id and message.data == b"job"
    second = QueueConsumer(Topic(other_backend, prefix + "t"), "g", sessions[1], name="second")
    assert second.get(timeout=0.3) is None  # claimed by first
    other_backend.lease_revoke(sessions[0].lease_id)  # first dies mid-message
    again = second.get(timeout=5)
    assert again is not None and again.id == message_id and again.data == b"job"
    assert first.ack(message) is False  # its claim was gone
    assert second.ack(again) is True
    wait_until(lambda: sessions[0].alive, timeout=5, message="first session re-granted")
    assert first.get(timeout=0.3) is None and second.get(timeout=0.3) is None
    first.close()
    second.close()


def test_queue_release_and_close_give_messages_back(backend, other_backend, prefix, sessions):
    topic = Topic(backend, prefix + "t")
    first = QueueConsumer(topic, "g", sessions[0])
    second = QueueConsumer(Topic(other_backend, prefix + "t"), "g", sessions[1])
    topic.publish(b"a")
    topic.publish(b"b")
    a = first.get(timeout=5)
    b = first.get(timeout=5)
    assert first.release(a) is True
    assert second.get(timeout=5).id == a.id
    first.close()  # b was never acked: released on close
    assert second.get(timeout=5).id == b.id
    second.close()


def test_trim_removes_done_markers_of_trimmed_messages(backend, prefix, sessions):
    topic = Topic(backend, prefix + "t", max_messages=3, trim_every=1000)
    consumer = QueueConsumer(topic, "g", sessions[0])
    for i in range(3):
        topic.publish(b"%d" % i)
        consumer.ack(consumer.get(timeout=5))
    assert len(backend.get_prefix(prefix + "t/done/g/").kvs) == 3
    for i in range(3):
        topic.publish(b"more%d" % i)  # pushes the first three out by count
    topic.trim()
    assert backend.get_prefix(prefix + "t/done/g/").kvs == ()
    consumer.close()


@pytest.mark.parametrize("max_messages", [1000, 10])
def test_subscriber_catches_up_after_compaction(backend, prefix, caplog, max_messages):
    topic = Topic(backend, prefix + "t", max_messages=max_messages)
    sub = topic.subscribe(max_buffer=4)
    topic.publish(b"warm-up")
    assert receive(sub, 1)[0].data == b"warm-up"
    for i in range(30):  # the subscriber's watch is suspended after 4
        topic.publish(b"%d" % i)
    wait_until(lambda: len(sub._buffer) >= 4, timeout=5, message="buffer filled")
    backend.compact(backend.revision())  # its resume revision is gone
    if max_messages == 1000:  # everything retained: nothing lost, nothing repeated
        expected = [b"%d" % i for i in range(30)]
    else:  # the 4 buffered, then only the 10 retained, with the gap reported
        expected = [b"%d" % i for i in range(4)] + [b"%d" % i for i in range(20, 30)]
    with caplog.at_level(logging.WARNING, logger="etcdvisor.recipes.topic"):
        got = [m.data for m in receive(sub, len(expected), timeout=5)]
        assert sub.get(timeout=0.2) is None
    sub.close()
    assert got == expected
    if max_messages == 1000:
        assert "trimmed before this subscriber" not in caplog.text
    else:
        assert "16 message(s) before id" in caplog.text
