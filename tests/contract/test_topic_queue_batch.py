"""Queue consumers claiming and acknowledging in batches (get_many /
ack_many), on both backends: each message once while claims are held,
nothing lost when batch claims collide."""

import threading

import pytest

from etcdvisor.coord.session import Session
from etcdvisor.recipes.topic import QueueConsumer, Topic
from etcdvisor.recipes.topic_queue import CLAIM_BATCH


@pytest.mark.slow  # seconds of real time: left out of the fast part (-m "not slow")
def test_racing_batch_claims_take_each_message_exactly_once(backend, other_backend, prefix):
    sessions = [Session(b, ttl=5, interval=0.2, name=f"s{i}").start()
                for i, b in enumerate((backend, other_backend, backend))]
    topic = Topic(backend, prefix + "t")
    consumers = [QueueConsumer(Topic(s.backend, prefix + "t"), "g", s, name=f"c{i}")
                 for i, s in enumerate(sessions)]
    taken: dict[str, list[int]] = {c.name: [] for c in consumers}
    ids: list[int] = []

    def work(consumer):
        while (batch := consumer.get_many(8, timeout=1.5)):
            taken[consumer.name] += [m.id for m in batch]
            assert consumer.ack_many(batch) == [True] * len(batch)
    threads = [threading.Thread(target=work, args=(c,)) for c in consumers]
    for thread in threads:
        thread.start()
    for round_ in range(6):  # the consumers race for every batch as it lands
        ids += topic.publish_many([b"%d-%d" % (round_, i) for i in range(50)])
    for thread in threads:
        thread.join(60)
    try:
        everything = sorted(i for got in taken.values() for i in got)
        assert everything == ids  # none lost, none twice
        assert backend.get_prefix(prefix + "t/claims/").kvs == ()
        assert len(backend.get_prefix(prefix + "t/done/g/").kvs) == len(ids)
    finally:
        for consumer in consumers:
            consumer.close()
        for session in sessions:
            session.close()


def test_get_many_is_bounded_and_ack_many_reports_a_lost_claim(backend, other_backend, prefix):
    first = Session(backend, ttl=5, interval=0.2, name="first").start()
    second = Session(other_backend, ttl=5, interval=0.2, name="second").start()
    topic = Topic(backend, prefix + "t")
    ids = topic.publish_many([b"%d" % i for i in range(CLAIM_BATCH + 8)])
    consumer = QueueConsumer(topic, "g", first)
    try:
        batch = consumer.get_many(1000, timeout=5)
        assert [m.id for m in batch] == ids[:CLAIM_BATCH]  # at most CLAIM_BATCH, lowest ids first
        assert [m.data for m in batch] == [b"%d" % i for i in range(CLAIM_BATCH)]
        other = QueueConsumer(Topic(other_backend, prefix + "t"), "g", second)
        assert [m.id for m in other.get_many(100, timeout=5)] == ids[CLAIM_BATCH:]  # the rest only
        assert other.get_many(100, timeout=0.3) == []
        backend.delete(topic.claim_key("g", ids[3]))  # one claim lost (as if its lease ended)
        assert consumer.ack_many(batch) == [i != 3 for i in range(CLAIM_BATCH)]
        done = {int(kv.key.rsplit("/", 1)[1]) for kv in backend.get_prefix(prefix + "t/done/g/").kvs}
        assert done == set(ids[:CLAIM_BATCH])  # the marker is written either way
        other.close()
    finally:
        consumer.close()
        first.close()
        second.close()
