"""A broadcast subscriber of a :class:`~.topic.Topic` (see that module's
docstring: delivery in id order, at least once, bounded buffering)."""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Iterable, Iterator

from ..coord.follow import Follower
from ..coord.types import EventType, KeyValue, WatchBatch
from .topic import _PAGE, Topic
from .topic_format import Message, is_message_key, message_from

log = logging.getLogger("etcdvisor.recipes.topic")


class Subscription:
    """An iterator of :class:`Message` fed by a follower thread; see the
    module docstring. ``get(timeout)`` returns None on timeout or close."""

    def __init__(self, topic: Topic, *, next_seq: int, after_id: int, watch_from: int,
                 max_buffer: int = 1000):
        self.topic = topic
        self.max_buffer = max(1, max_buffer)
        self.last_id = after_id  # last id handed to the consumer
        self._next_seq = next_seq  # follower thread only
        self._last_queued = after_id
        self._buffer: collections.deque[Message] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self._follower = Follower(topic.backend, topic.msg_prefix, topic.msg_end,
                                  resync=self._catch_up, on_batch=self._on_batch,
                                  before_watch=self._room_before_watch, start_revision=watch_from,
                                  name=f"subscribe:{topic.prefix}")
        self._follower.start()

    def get(self, timeout: float | None = None) -> Message | None:
        with self._cond:
            if not self._cond.wait_for(lambda: self._buffer or self._closed, timeout):
                return None
            if not self._buffer:
                return None
            message = self._buffer.popleft()
            self.last_id = message.id
            self._cond.notify_all()  # the follower may wait for room
            return message

    def __iter__(self) -> Iterator[Message]:
        return self

    def __next__(self) -> Message:
        message = self.get()
        if message is None:
            raise StopIteration
        return message

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._follower.stop()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- follower thread ---------------------------------------------------------
    def _queue_all(self, kvs: Iterable[KeyValue]) -> None:
        """Buffer the new messages among ``kvs`` (in id order) under one
        lock and wake the consumer once: a watch batch under load carries
        many messages, and a wake-up per message cost more than the copy."""
        fresh = []
        for kv in kvs:
            if not is_message_key(kv.key):
                log.warning("topic %s: ignoring %r: not a message key", self.topic.prefix, kv.key)
                continue
            message = message_from(kv)
            if message.id <= self._last_queued:
                continue  # already delivered (a re-read overlapping the watch)
            if message.seq > self._next_seq:
                log.warning("topic %s: %d message(s) before id %d were trimmed before this subscriber "
                            "read them", self.topic.prefix, message.seq - self._next_seq, message.id)
            self._next_seq = message.seq + 1
            self._last_queued = message.id
            fresh.append(message)
        if fresh:
            with self._cond:
                self._buffer.extend(fresh)
                self._cond.notify_all()

    def _on_batch(self, batch: WatchBatch) -> bool:
        self._queue_all([event.kv for event in batch.events
                         if event.type is EventType.PUT and event.kv.version == 1])
        with self._cond:
            return len(self._buffer) >= self.max_buffer  # full: suspend the watch

    def _room_before_watch(self) -> None:
        """Follower hook: the watch opens once the buffer has drained to its low-water mark."""
        self._wait_for_room()

    def _wait_for_room(self, low_water: bool = True) -> int:
        """Block until the buffer has room; return how much."""
        limit = self.max_buffer // 2 if low_water else self.max_buffer - 1
        with self._cond:
            self._cond.wait_for(lambda: len(self._buffer) <= limit or self._closed
                                or self._follower.stopping.is_set())
            return max(1, self.max_buffer - len(self._buffer))

    def _catch_up(self) -> int:
        """Deliver every retained message from ``_next_seq`` on, in pages
        read at one revision R, and return R (the watch goes on from R+1)."""
        topic, revision = self.topic, 0
        start = topic.seq_key(self._next_seq)
        while not self._follower.stopping.is_set():
            room = min(_PAGE, self._wait_for_room(low_water=False))
            page = topic.backend.range(start, topic.msg_end, revision=revision, limit=room)
            revision = page.revision
            self._queue_all(page.kvs)
            if len(page.kvs) < room or page.count <= len(page.kvs):
                break
            start = page.kvs[-1].key + "\0"
        return revision
