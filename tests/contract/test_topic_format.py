"""A topic's id format (``<prefix>format``), on both backends: the default
keeps the id == store revision contract; the format is recorded once and
every publisher follows it, so one topic never mixes formats and ids never
go backwards."""

import logging
import threading

import pytest

from etcdvisor.recipes.topic import ID_SCALE, Topic, is_message_key, message_id
from etcdvisor.recipes.topic_format import BadTopicFormat, IdFormat

from .test_topic import receive


def keys_and_ids(backend, topic):
    kvs = [kv for kv in backend.get_prefix(topic.msg_prefix).kvs if is_message_key(kv.key)]
    return kvs, [message_id(kv) for kv in kvs]


def publish_concurrently(topics, rounds=5):
    """Each topic object published to by two threads, mixing publish() and
    publish_many(); every call's ids, per thread in call order."""
    results: list[list[int]] = []
    lock = threading.Lock()

    def worker(index, topic):
        mine = []
        for round_ in range(rounds):
            payloads = [b"%d-%d-%d" % (index, round_, i) for i in range(1 + (index + round_) % 4)]
            mine += topic.publish_many(payloads) if round_ % 2 else [topic.publish(p) for p in payloads]
        with lock:
            results.append(mine)
    threads = [threading.Thread(target=worker, args=(i, topics[i % len(topics)])) for i in range(2 * len(topics))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


def test_default_ids_are_the_create_revisions(backend, prefix):
    topic = Topic(backend, prefix + "t")
    sub = topic.subscribe()
    per_thread = publish_concurrently([topic])  # concurrent callers of one object: no shared txn
    ids = sorted(i for mine in per_thread for i in mine)
    ids += topic.publish_many([b"m0", b"m1", b"m2"])
    assert all(mine == sorted(mine) for mine in per_thread)
    kvs, stored = keys_and_ids(backend, topic)
    assert stored == ids == [kv.create_revision for kv in kvs]  # id IS the store revision
    assert len({kv.create_revision for kv in kvs}) == len(kvs)  # one message per transaction
    assert all(kv.key.rsplit("/", 1)[1].count("-") == 1 for kv in kvs)  # the pre-batching key
    assert backend.get(topic.format_key).value == b"revision"
    assert topic.id_format is IdFormat.REVISION
    assert [m.id for m in receive(sub, len(ids))] == ids
    sub.close()


def test_format_is_recorded_once_by_the_first_publisher(backend, other_backend, prefix):
    batched = Topic(backend, prefix + "t", batched=True)
    first = batched.publish_many([b"a", b"b"])
    assert first == [first[0], first[0] + 1] and first[0] // ID_SCALE > 0
    created = backend.get(batched.format_key)
    assert created.value == b"batched"
    plain = Topic(other_backend, prefix + "t")  # a default publisher follows the topic
    later = plain.publish_many([b"c", b"d", b"e"])
    assert plain.id_format is IdFormat.BATCHED
    assert later[0] // ID_SCALE == later[2] // ID_SCALE > first[0] // ID_SCALE  # one transaction
    again = Topic(backend, prefix + "t", batched=False).publish(b"f")
    assert again > later[-1]
    recorded = backend.get(batched.format_key)
    assert (recorded.version, recorded.create_revision) == (1, created.create_revision)  # never rewritten
    kvs, stored = keys_and_ids(backend, batched)
    assert stored == first + later + [again]


def test_batched_publisher_follows_a_revision_topic(backend, prefix, caplog):
    Topic(backend, prefix + "t").publish(b"first")  # creates the topic in revision format
    caplog.set_level(logging.INFO, logger="etcdvisor.recipes.topic")
    follower = Topic(backend, prefix + "t", batched=True)
    ids = follower.publish_many([b"%d" % i for i in range(5)]) + [follower.publish(b"x")]
    ids += follower.publish_many([b"y", b"z"])
    kvs, stored = keys_and_ids(backend, follower)
    assert stored[1:] == ids == [kv.create_revision for kv in kvs[1:]]
    assert follower.id_format is IdFormat.REVISION
    assert backend.get(follower.format_key).value == b"revision"
    assert caplog.text.count("recorded in revision format") == 1  # logged once, not per publish


@pytest.mark.parametrize("batched_first", [True, False])
def test_mixed_publishers_never_mix_formats_or_misorder_ids(backend, other_backend, prefix, batched_first):
    """Batched and default publishers (separate connections) racing on a new
    topic: whoever records the format first wins, everyone follows it."""
    topics = [Topic(backend, prefix + "t", batched=batched_first),
              Topic(other_backend, prefix + "t", batched=not batched_first),
              Topic(other_backend, prefix + "t", batched=True)]
    sub = Topic(backend, prefix + "t").subscribe(from_id=0)
    per_thread = publish_concurrently(topics)
    total = sum(len(mine) for mine in per_thread)
    assert all(mine == sorted(mine) for mine in per_thread)  # ids grow with each thread's publishes
    kvs, stored = keys_and_ids(backend, topics[0])
    assert stored == sorted(stored) and len(set(stored)) == total  # key order is id order, no duplicate
    assert sorted(i for mine in per_thread for i in mine) == stored  # readers see the returned ids
    formats = {t.id_format for t in topics}
    assert len(formats) == 1  # every publisher follows the one recorded format
    offsets = {kv.key.rsplit("/", 1)[1].count("-") for kv in kvs}
    assert offsets == ({2} if formats == {IdFormat.BATCHED} else {1})
    assert [m.id for m in receive(sub, total)] == stored
    sub.close()


def test_a_deleted_format_key_is_resolved_again_without_going_backwards(backend, prefix):
    batched = Topic(backend, prefix + "t", batched=True)
    before = batched.publish_many([b"a", b"b"])
    backend.delete(batched.format_key)  # an operator's mistake: the topic keeps its keys
    plain = Topic(backend, prefix + "t")
    after = plain.publish(b"c")  # follows the newest key: batched, so the id still grows
    assert after > before[-1] and backend.get(batched.format_key).value == b"batched"
    also = batched.publish(b"d")  # its guard on the format key failed: it read it again
    assert also > after
    assert keys_and_ids(backend, batched)[1] == before + [after, also]


def test_garbage_format_fails_the_publish_naming_the_key(backend, prefix):
    topic = Topic(backend, prefix + "t")
    backend.put(topic.format_key, b"\xff" * 1000)
    with pytest.raises(BadTopicFormat, match="format: unknown topic id format"):
        topic.publish(b"x")
    assert not backend.get_prefix(topic.msg_prefix).kvs
    backend.put(topic.format_key, b"revision")
    assert topic.publish(b"y") == backend.get_prefix(topic.msg_prefix).kvs[0].create_revision
