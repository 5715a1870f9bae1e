"""The KV facade's key watcher after a compacted gap (memory backend): the
last known value and the re-read one are compared, and only a difference is
a change (every put, with every_write)."""

import queue

import pytest

from etcdvisor.coord.memory import MemoryBackend
from etcdvisor.kv_watch import KeyChange, KeyFollower


def follow(backend, key, every_write):
    seen = queue.Queue()
    follower = KeyFollower(backend, key, lambda change, kv: seen.put((change, kv and kv.value)) and False,
                            every_write=every_write, retry_interval=1.0).start()
    return follower, seen


def rewrite_across_a_compacted_gap(backend, key, values):
    """Break the watch streams, write ``values`` and compact while the
    followers wait to retry (1 s), so that they must re-read."""
    backend.store.break_watches()
    for value in values:
        backend.put(key, value)
    backend.put("/kv/unrelated", b"x")  # the gap's last revision is not ours
    backend.compact(backend.revision())


@pytest.mark.slow  # seconds of real time: left out of the fast part (-m "not slow")
def test_same_value_after_a_compacted_gap_is_not_a_change():
    backend = MemoryBackend()
    key = "/kv/resync"
    backend.put(key, b"a")
    changes, changes_seen = follow(backend, key, every_write=False)
    writes, writes_seen = follow(backend, key, every_write=True)
    rewrite_across_a_compacted_gap(backend, key, [b"b", b"a"])
    assert writes_seen.get(timeout=5) == (KeyChange.PUT, b"a")  # rewritten: a write happened
    backend.put(key, b"c")  # a later change still arrives, and is the first one seen
    assert changes_seen.get(timeout=5) == (KeyChange.PUT, b"c")
    assert writes_seen.get(timeout=5) == (KeyChange.PUT, b"c")
    rewrite_across_a_compacted_gap(backend, key, [b"d"])
    assert changes_seen.get(timeout=5) == (KeyChange.PUT, b"d")
    backend.store.break_watches()
    backend.delete(key)
    backend.put("/kv/unrelated", b"y")
    backend.compact(backend.revision())
    assert changes_seen.get(timeout=5) == (KeyChange.DELETE, None)
    for follower in (changes, writes):
        follower.stop()
    assert changes_seen.empty()
