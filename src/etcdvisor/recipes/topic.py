"""Topic pub/sub on etcd v3 (sereno's PubSubTopic, with its flaws fixed:
messages have ids, subscribers resume without loss, retention is bounded,
and a queue mode hands each message to exactly one consumer of a group).

Key layout under ``prefix`` (a trailing ``/`` is added if missing)::

    head                     last sequence number given out (decimal)
    msg/<seq:016d>-<ms:013d> the payload; ms = publisher's wall clock (Unix ms)
    claims/<group>/<id:020d> a queue consumer's claim, on its session lease
    done/<group>/<id:020d>   "processed by the group" marker (no lease)
    groups/<group>           the queue groups (so trimming finds done markers)

**Message ids.** A message's id is the store revision of the transaction
that wrote it (its key's create revision). Publishing is one transaction
that (if the ``head`` key is unchanged since it was read) bumps ``head`` to
the next sequence number and writes ``msg/<seq>``; a lost race is retried
with the fresh head. So all messages of a topic are written one after the
other: ids strictly increase in publish order (a publish that returned
before another started has the smaller id), *and* key order (by sequence)
is id order, which lets readers page through the backlog by key and
trimming delete the oldest messages with one range delete. (The id cannot
be in the key: the revision is only known once the write is committed.)
Ids are not dense: other writes in the store take revisions in between.

**Retention** is enforced by publishers, cheaply: the publish transaction
itself deletes the messages beyond the newest ``max_messages``; messages
older than ``retention`` seconds (by the time in their key) and the done
markers of trimmed messages are deleted by :meth:`Topic.trim`, which
``publish`` runs every ``trim_every`` publishes or when the oldest message
it knows of falls due. An idle topic keeps its messages until the next
publish (or a manual ``trim()``).

**Subscribers** (:meth:`Topic.subscribe`, broadcast: every subscriber sees
every message) receive messages in id order, at least once: from now, or
after a given id (resuming after a restart: no loss while the messages are
retained; if the resume point was already trimmed, what is still retained
is delivered and a warning is logged). A follower thread reads the retained
backlog at revision R, watches from R+1, resumes after errors from the last
revision seen and re-reads the backlog after a compaction; gaps (messages
trimmed before this subscriber read them) are logged with their count.
Delivery is buffered: when ``max_buffer`` messages wait for a slow
consumer the follower cancels its watch (the server stream never backs up)
and resumes once the buffer is half drained, so memory stays bounded
(``max_buffer`` plus one watch batch) and nothing retained is lost.

The queue mode lives in :mod:`.topic_queue` (:class:`QueueConsumer`).

Limits: a topic is one serialisation point (publishers of one topic do not
write in parallel; about one publish per etcd commit); payloads are bytes of
at most ``max_payload`` (default 64 KiB, at most 1 MiB); ``published_at`` is
the publisher's wall clock. Deleting ``head`` resets the sequence:
restart subscribers after doing that.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ..coord.base import Backend
from ..coord.follow import Follower
from ..coord.types import Delete, EventType, Get, KeyValue, Put, WatchBatch, missing, mod_revision, prefix_end
from .counter import ConflictRetry, parse_count

log = logging.getLogger(__name__)

MessageId = int
MAX_PAYLOAD_LIMIT = 1 << 20  # etcd's default request limit is 1.5 MiB
_PAGE = 256


class PayloadTooLarge(ValueError):
    """A payload is bigger than the topic's ``max_payload``."""


@dataclass(frozen=True)
class Message:
    id: MessageId  # store revision the message was written at
    data: bytes
    published_at: float  # Unix seconds, publisher's clock
    seq: int = 0  # per-topic sequence number (dense, starts at 1)


def parse_message_key(key: str) -> tuple[int, float]:
    """(sequence, published_at) from ``.../msg/<seq>-<ms>``."""
    seq, ms = key.rsplit("/", 1)[1].split("-")
    return int(seq), int(ms) / 1000.0


def message_from(kv: KeyValue) -> Message:
    seq, published_at = parse_message_key(kv.key)
    return Message(id=kv.create_revision, data=kv.value, published_at=published_at, seq=seq)


class Topic:
    """A topic at ``prefix``; see module docstring. Thread-safe."""

    def __init__(self, backend: Backend, prefix: str, *, retention: float = 3600.0,
                 max_messages: int = 10000, max_payload: int = 65536, trim_every: int = 256,
                 clock: Callable[[], float] = time.time):
        if not 0 < max_payload <= MAX_PAYLOAD_LIMIT:
            raise ValueError(f"max_payload must be in 1..{MAX_PAYLOAD_LIMIT}, got {max_payload}")
        if max_messages < 1 or retention <= 0:
            raise ValueError("max_messages and retention must be positive")
        self.backend = backend
        self.prefix = prefix if prefix.endswith("/") else prefix + "/"
        self.retention = float(retention)
        self.max_messages = int(max_messages)
        self.max_payload = int(max_payload)
        self.trim_every = trim_every
        self.clock = clock
        self.head_key = self.prefix + "head"
        self.msg_prefix = self.prefix + "msg/"
        self.msg_end = prefix_end(self.msg_prefix)
        self._lock = threading.Lock()
        self._head = (0, 0)  # (mod revision, seq) of head as last seen; 0: missing
        self._published = 0
        self._next_trim_at = 0.0  # wall time; 0: trim on the first publish

    # --- keys ---------------------------------------------------------------
    def seq_key(self, seq: int) -> str:
        """The key prefix of message ``seq`` (sorts before the message key)."""
        return f"{self.msg_prefix}{seq:016d}"

    def claim_key(self, group: str, message_id: int) -> str:
        return f"{self.prefix}claims/{group}/{message_id:020d}"

    def done_key(self, group: str, message_id: int) -> str:
        return f"{self.prefix}done/{group}/{message_id:020d}"

    # --- publish --------------------------------------------------------------
    def publish(self, data: bytes) -> MessageId:
        """Store ``data`` as the next message and return its id. Raises
        :class:`PayloadTooLarge` before writing anything if it is too big."""
        if isinstance(data, (bytearray, memoryview)):
            data = bytes(data)
        if not isinstance(data, bytes):
            raise TypeError(f"payload must be bytes, got {type(data).__name__}")
        if len(data) > self.max_payload:
            raise PayloadTooLarge(f"payload of {len(data)} bytes exceeds the topic's max_payload "
                                  f"of {self.max_payload} bytes ({self.prefix})")
        backoff = ConflictRetry(f"publish to {self.prefix!r}")
        with self._lock:
            head_mod, head_seq = self._head
        while True:
            seq = head_seq + 1
            key = f"{self.seq_key(seq)}-{int(self.clock() * 1000):013d}"
            guard = mod_revision(self.head_key, "=", head_mod) if head_mod else missing(self.head_key)
            ops = [Put(self.head_key, str(seq)), Put(key, data)]
            if seq > self.max_messages:  # keep the newest max_messages, in the same write
                ops.append(Delete(self.msg_prefix, self.seq_key(seq - self.max_messages + 1)))
            result = self.backend.txn([guard], ops, [Get(self.head_key)])
            if result.succeeded:
                break
            fresh = result.responses[0]
            head = fresh[0] if fresh else None
            if backoff.wait() > 0.001:  # paused: the head we got is likely stale
                head = self.backend.get(self.head_key)
            head_mod, head_seq = (head.mod_revision, parse_count(head)) if head else (0, 0)
        with self._lock:
            if result.revision > self._head[0]:
                self._head = (result.revision, seq)
            self._published += 1
            due = self._published % self.trim_every == 0 or self.clock() >= self._next_trim_at
        if due:
            try:
                self.trim()
            except Exception as exc:  # the message is published; trimming is best effort
                log.warning("topic %s: trimming failed: %s", self.prefix, exc)
        return result.revision

    # --- retention ------------------------------------------------------------
    def trim(self) -> int:
        """Delete messages older than ``retention`` and the done markers of
        messages no longer retained; return how many messages were deleted."""
        cutoff_ms = int((self.clock() - self.retention) * 1000)
        deleted, oldest_kept, revision = 0, None, 0
        while oldest_kept is None:
            page = self.backend.range(self.msg_prefix, self.msg_end, limit=_PAGE, keys_only=True)
            revision = page.revision
            last_expired = None
            for kv in page.kvs:
                if parse_message_key(kv.key)[1] * 1000 < cutoff_ms:
                    last_expired = kv
                else:
                    oldest_kept = kv
                    break
            if last_expired is not None:
                deleted += self.backend.delete(self.msg_prefix, last_expired.key + "\0")
            if last_expired is None or len(page.kvs) < _PAGE:
                break
        # every message below this id is gone: so are their done markers
        oldest_id = oldest_kept.create_revision if oldest_kept else revision + 1
        groups = self.backend.get_prefix(self.prefix + "groups/", keys_only=True).kvs
        for group_kv in groups:
            group = group_kv.key.rsplit("/", 1)[1]
            self.backend.delete(f"{self.prefix}done/{group}/", self.done_key(group, oldest_id))
        with self._lock:
            if oldest_kept is not None:
                self._next_trim_at = parse_message_key(oldest_kept.key)[1] + self.retention
            else:
                self._next_trim_at = self.clock() + self.retention
        if deleted:
            log.debug("topic %s: trimmed %d expired messages", self.prefix, deleted)
        return deleted

    # --- subscribe ------------------------------------------------------------
    def subscribe(self, from_id: MessageId | None = None, *, max_buffer: int = 1000) -> Subscription:
        """Messages published after this call (``from_id=None``) or every
        retained message with an id above ``from_id``, in id order."""
        if from_id is None:
            head = self.backend.range(self.head_key)
            seq = parse_count(head.kvs[0] if head.kvs else None)
            return Subscription(self, next_seq=seq + 1, after_id=0, watch_from=head.revision + 1,
                                max_buffer=max_buffer)
        return Subscription(self, next_seq=self._resolve(from_id), after_id=from_id,
                            watch_from=0, max_buffer=max_buffer)

    def _resolve(self, after_id: MessageId) -> int:
        """Sequence number of the first retained message with an id above
        ``after_id``; warn when ``after_id`` itself was trimmed."""
        retained = self.backend.range(self.msg_prefix, self.msg_end, keys_only=True)
        ids = [kv.create_revision for kv in retained.kvs]
        later = [kv for kv in retained.kvs if kv.create_revision > after_id]
        if later:
            next_seq = parse_message_key(later[0].key)[0]
        else:
            head = self.backend.range(self.head_key, revision=retained.revision)
            next_seq = parse_count(head.kvs[0] if head.kvs else None) + 1
        if after_id > 0 and after_id not in ids:
            oldest = ids[0] if ids else self._head_revision(retained.revision)
            if oldest > after_id:  # it existed, was trimmed, and so may later ones
                log.warning("topic %s: resume point %d is no longer retained (trimmed); delivering "
                            "from the oldest retained message: messages in between may be lost",
                            self.prefix, after_id)
        return next_seq

    def _head_revision(self, revision: int) -> int:
        head = self.backend.range(self.head_key, revision=revision)
        return head.kvs[0].mod_revision if head.kvs else 0


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
                                  before_watch=self._wait_for_room, start_revision=watch_from,
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

    def __exit__(self, *exc) -> None:
        self.close()

    # --- follower thread ---------------------------------------------------------
    def _queue_all(self, kvs) -> None:
        """Buffer the new messages among ``kvs`` (in id order) under one
        lock and wake the consumer once: a watch batch under load carries
        many messages, and a wake-up per message cost more than the copy."""
        fresh = []
        for kv in kvs:
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


def __getattr__(name: str):
    # QueueConsumer lives in .topic_queue (which imports this module)
    if name == "QueueConsumer":
        from .topic_queue import QueueConsumer

        return QueueConsumer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
