"""Topic message ids in the batched format (group commit: several messages per
transaction), on both backends: distinct, ordered, derivable from the stored keys, and
resumable after trimming without a loss, a duplicate or a misordering."""

import random
import threading
import time

import pytest

from etcdvisor.coord.session import Session
from etcdvisor.coord.types import Put
from etcdvisor.recipes.topic import ID_SCALE, MAX_BATCH, Message, QueueConsumer, Topic, message_id

from .test_topic import receive


def stored(backend, topic):
    """(id, seq, payload) of every retained message, in key order."""
    kvs = backend.get_prefix(topic.msg_prefix).kvs
    return [(message_id(kv), int(kv.key.rsplit("/", 1)[1].split("-")[0]), kv.value) for kv in kvs]


def drain(sub, count):
    """``count`` messages, then whatever else comes within 0.05 s (a duplicate)."""
    got = receive(sub, count)
    while (extra := sub.get(timeout=0.05)) is not None:
        got.append(extra)
    return got


def test_concurrent_callers_share_transactions_with_distinct_ordered_ids(backend, other_backend, prefix):
    shared, rival = Topic(backend, prefix + "t", batched=True), Topic(other_backend, prefix + "t", batched=True)
    sub = shared.subscribe(from_id=0)
    published: dict[int, bytes] = {}
    per_call: list[list[int]] = []
    lock = threading.Lock()

    def publisher(index, topic):
        for round_ in range(6):
            payloads = [b"%d-%d-%d" % (index, round_, i) for i in range(index * 7 + 1)]
            ids = topic.publish_many(payloads) if round_ % 2 else [topic.publish(p) for p in payloads]
            with lock:
                per_call.append(ids)
                published.update(zip(ids, payloads))
    threads = [threading.Thread(target=publisher, args=(i, shared if i % 3 else rival)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    total = sum(i * 7 + 1 for i in range(6)) * 6
    assert len(published) == total  # every id distinct
    assert all(ids == sorted(ids) for ids in per_call)  # a call's ids follow its order
    rows = stored(backend, shared)
    assert [row[0] for row in rows] == sorted(published)  # key order is id order
    assert [row[1] for row in rows] == list(range(1, total + 1))  # dense sequence, no gap
    assert {row[0]: row[2] for row in rows} == published  # readers derive the returned ids
    revisions = [row[0] // ID_SCALE for row in rows]
    assert len(set(revisions)) < total  # messages did share transactions
    got = receive(sub, total)
    sub.close()
    assert [(m.id, m.data) for m in got] == sorted(published.items())


def test_publish_many_splits_at_the_batch_limits(backend, prefix):
    topic = Topic(backend, prefix + "t", max_payload=400_000, batched=True)
    ids = topic.publish_many([b"%d" % i for i in range(MAX_BATCH * 2 + 5)])
    revisions = [i // ID_SCALE for i in ids]
    assert [revisions.count(r) for r in sorted(set(revisions))] == [MAX_BATCH, MAX_BATCH, 5]
    assert [i % ID_SCALE for i in ids] == list(range(MAX_BATCH)) * 2 + list(range(5))
    big = topic.publish_many([b"x" * 400_000] * 5)  # 2 MB: over one request's worth
    assert len({i // ID_SCALE for i in big}) == 3 and big == sorted(big)
    assert topic.publish_many([]) == []


@pytest.mark.slow  # seconds of real time: left out of the fast part (-m "not slow")
@pytest.mark.parametrize("seed", [1, 2])
def test_resume_after_trim_delivers_exactly_the_retained_later_messages(backend, prefix, seed):
    rng = random.Random(seed)
    topic = Topic(backend, prefix + "t", max_messages=150, trim_every=10_000, batched=True)
    payloads: dict[int, bytes] = {}
    for round_ in range(5):
        batch = [b"%d-%d" % (round_, i) for i in range(rng.randint(1, 130))]
        payloads.update(zip(topic.publish_many(batch), batch))
        payloads[topic.publish(b"single-%d" % round_)] = b"single-%d" % round_
        retained = stored(backend, topic)
        assert [row[0] for row in retained] == sorted(payloads)[-len(retained):]  # the newest, by count
        assert len(retained) == min(150, len(payloads))
        everything = sorted(payloads)
        resume_points = [0, everything[0], everything[-1], rng.choice(everything),
                         rng.choice(everything) + 1, retained[0][0] - 1]  # trimmed ones, between ids
        for after in resume_points:
            expected = [(row[0], row[2]) for row in retained if row[0] > after]
            sub = topic.subscribe(from_id=after)
            got = drain(sub, len(expected))
            sub.close()
            assert [(m.id, m.data) for m in got] == expected, after


def test_topic_written_before_formats_keeps_revision_ids(backend, prefix, caplog):
    """A topic published to before the format key existed (plain keys, no
    ``format``) stays in revision format, even for a batched publisher;
    cursors and done markers made then stay valid."""
    topic = Topic(backend, prefix + "t", batched=True)
    old_ids = []
    for seq in (1, 2):
        result = backend.txn([], [Put(topic.head_key, str(seq).encode()),
                                  Put(f"{topic.seq_key(seq)}-{int(time.time() * 1000):013d}", b"old%d" % seq)])
        old_ids.append(result.revision)
    new_ids = topic.publish_many([b"new0", b"new1"])
    assert old_ids[1] < new_ids[0] < new_ids[1]
    assert backend.get(topic.format_key).value == b"revision"  # recorded as it was written
    assert new_ids[1] - new_ids[0] < ID_SCALE  # plain revisions: one transaction each
    assert [row[0] for row in stored(backend, topic)] == old_ids + new_ids
    sub = topic.subscribe(from_id=old_ids[0])  # a cursor stored by the old version
    assert [m.data for m in receive(sub, 3)] == [b"old2", b"new0", b"new1"]
    sub.close()
    session = Session(backend, ttl=5, interval=0.2, name="q").start()
    try:
        backend.put(topic.done_key("g", old_ids[0]), b"old member")  # acked by the old version
        consumer = QueueConsumer(topic, "g", session)
        got = [consumer.get(timeout=5) for _ in range(3)]
        assert [m.id for m in got] == [old_ids[1]] + new_ids
        assert all(consumer.ack(m) for m in got)
        assert consumer.get(timeout=0.3) is None
        consumer.close()
    finally:
        session.close()


def test_queue_consumers_take_each_batched_message_once(backend, other_backend, prefix):
    sessions = [Session(backend, ttl=5, interval=0.2, name="a").start(),
                Session(other_backend, ttl=5, interval=0.2, name="b").start()]
    publisher = Topic(backend, prefix + "t", batched=True)
    consumers = [QueueConsumer(Topic(b, prefix + "t"), "g", s) for b, s in zip((backend, other_backend), sessions)]
    ids = publisher.publish_many([b"job%d" % i for i in range(60)])
    taken: list[Message] = []
    lock = threading.Lock()

    def work(consumer):
        while (message := consumer.get(timeout=1.0)) is not None:
            with lock:
                taken.append(message)
            assert consumer.ack(message)
    threads = [threading.Thread(target=work, args=(c,)) for c in consumers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    try:
        assert sorted(m.id for m in taken) == ids  # each exactly once
        assert {m.id: m.data for m in taken} == dict(zip(ids, (b"job%d" % i for i in range(60))))
        assert len(backend.get_prefix(prefix + "t/done/g/").kvs) == 60
    finally:
        for consumer in consumers:
            consumer.close()
        for session in sessions:
            session.close()


class FailingTxns:
    """A backend whose ``txn`` raises on the calls numbered in ``failing``."""

    def __init__(self, backend, failing):
        self._backend, self._failing, self.calls = backend, set(failing), 0

    def txn(self, *args, **kwargs):
        self.calls += 1
        if self.calls in self._failing:
            raise ConnectionError("injected")
        return self._backend.txn(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._backend, name)


def test_a_failed_transaction_stops_its_call_and_spares_the_others():
    from etcdvisor.coord import open_backend

    backend = open_backend("memory://topic-ids-failing")
    flaky = FailingTxns(backend, failing={3})
    topic = Topic(flaky, "/t/", trim_every=10_000, batched=True)
    with pytest.raises(ConnectionError):  # txn 1 records the format; the 2nd of 3 batches fails
        topic.publish_many([b"%d" % i for i in range(MAX_BATCH * 3)])
    rows = stored(backend, topic)
    assert [row[2] for row in rows] == [b"%d" % i for i in range(MAX_BATCH)]  # a prefix, no gap
    assert flaky.calls == 3  # the third batch of the failed call was never sent
    after = topic.publish_many([b"a", b"b"])
    assert [row[0] for row in stored(backend, topic)][-2:] == after
    assert [row[1] for row in stored(backend, topic)] == list(range(1, MAX_BATCH + 3))


def test_junk_under_msg_is_skipped_by_every_reader(backend, prefix, caplog):
    topic = Topic(backend, prefix + "t", retention=60, trim_every=1, batched=True)
    first = topic.publish(b"first")
    for junk in ("zzz", "0000000000000001-x", "1-2-3-4", "0000000000000001"):
        backend.put(topic.msg_prefix + junk, b"junk")
    ids = [first] + topic.publish_many([b"a", b"b"])  # trims (trim_every=1) past the junk
    sub = topic.subscribe(from_id=0)
    assert [m.data for m in drain(sub, 3)] == [b"first", b"a", b"b"]
    sub.close()
    assert "not a message key" in caplog.text
    resumed = topic.subscribe(from_id=first)
    assert [m.id for m in drain(resumed, 2)] == ids[1:]
    resumed.close()
    session = Session(backend, ttl=5, interval=0.2, name="q").start()
    try:
        consumer = QueueConsumer(topic, "g", session)
        got = consumer.get_many(10, timeout=5)
        got += consumer.get_many(10, timeout=0.5)
        assert [m.id for m in got] == ids
        consumer.close()
    finally:
        session.close()
