"""Topic pub/sub on etcd v3 (sereno's PubSubTopic, with its flaws fixed:
messages have ids, subscribers resume without loss, retention is bounded,
and a queue mode hands each message to exactly one consumer of a group).

Key layout under ``prefix`` (a trailing ``/`` is added if missing)::

    format                         the id format: ``revision`` (also if absent) or ``batched``
    head                           last sequence number given out (decimal)
    msg/<seq:016d>-<ms:013d>[-<off:03d>]  the payload; ms = publisher's wall
                                   clock (Unix ms); off (batched format only) =
                                   its place in its transaction
    claims/<group>/<id:020d>       a queue consumer's claim, on its session lease
    done/<group>/<id:020d>         "processed by the group" marker (no lease)
    groups/<group>                 the queue groups (so trimming finds done markers)

**Message ids.** Publishing is one transaction that (if the ``head`` key is
unchanged since it was read, and the ``format`` key too) bumps ``head`` past
what it writes and writes ``msg/<seq>`` for each message; a lost race is
retried with the fresh head. Each topic records its id format once
(:mod:`.topic_format`; the first publisher writes it):

* ``revision`` (default): one message per transaction, and its id IS the
  store revision that wrote it (the key's create revision). Concurrent
  ``publish()`` callers of one :class:`Topic` take turns (never share a
  transaction); :meth:`Topic.publish_many` sends one transaction per message.
* ``batched`` (``Topic(..., batched=True)`` on a topic never published to):
  group commit. A batch is whatever was waiting when the previous
  transaction returned: concurrent ``publish()`` callers share transactions,
  and ``publish_many`` sends a list in as few transactions as the limits
  allow (at most ``MAX_BATCH`` messages and ``MAX_BATCH_BYTES`` of payload
  each). A message's id is ``R * ID_SCALE + off``, R being the revision of
  the transaction and ``off`` its offset in it, stored in its key.

A ``batched=True`` publisher on a topic already in ``revision`` format
follows the topic (logged once), so one topic never mixes formats. Readers
derive every id from the stored key (:func:`message_id`: an offset in the
key means the batched form), so they need not know the format. Either way
all messages of a topic are written one after the other: ids strictly
increase in publish order (a publish that returned before another started
has the smaller id), *and* key order (by sequence) is id order, which lets
readers page through the backlog by key and trimming delete the oldest
messages with one range delete. (R cannot be in the key: it is only known
once the write is committed.) Ids are not dense: other writes in the store
take revisions in between. A batched topic needs every publisher to run a
version that knows formats (an older one would write plain-revision ids,
smaller than the batched ones).

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

The queue mode lives in :mod:`.topic_queue` (:class:`QueueConsumer`), the
subscriber in :mod:`.topic_subscribe` (:class:`Subscription`).

Limits: a topic is one serialisation point (publishers of one topic do not
write in parallel: one transaction per etcd commit, carrying one message, or
in batched format every message waiting in that :class:`Topic` object;
separate publishers race on ``head`` and retry, so share one :class:`Topic`
between threads); payloads
are bytes of at most ``max_payload`` (default 64 KiB, at most 1 MiB); ``published_at`` is
the publisher's wall clock. Deleting ``head`` resets the sequence:
restart subscribers after doing that.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from ..coord.base import Backend
from ..coord.retry import CONFLICT_RETRY
from ..coord.types import Delete, Get, Op, Put, missing, mod_revision, prefix_end
from .counter import parse_count
from .topic_format import (  # noqa: F401  (the keys and ids are part of this module's API)
    ID_SCALE,
    BadTopicFormat,
    IdFormat,
    Message,
    MessageId,
    is_message_key,
    message_from,
    message_id,
    parse_message_key,
    read_format,
    resolve_format,
)

if TYPE_CHECKING:
    from .topic_subscribe import Subscription

log = logging.getLogger(__name__)

__all__ = [  # with the names of topic_format.py this module has always handed on (and, lazily,
    # QueueConsumer and Subscription: see __getattr__)
    "ID_SCALE", "MAX_BATCH", "MAX_BATCH_BYTES", "MAX_PAYLOAD_LIMIT", "BadTopicFormat", "IdFormat", "Message",
    "MessageId", "PayloadTooLarge", "Topic", "is_message_key", "message_from",
    "message_id", "parse_message_key", "read_format", "resolve_format",
]

MAX_PAYLOAD_LIMIT = 1 << 20  # etcd's default request limit is 1.5 MiB
MAX_BATCH = 100  # messages per transaction: etcd's --max-txn-ops defaults to 128 (head + deletes)
MAX_BATCH_BYTES = MAX_PAYLOAD_LIMIT  # payload per transaction, under etcd's 1.5 MiB request limit
_PAGE = 256


class PayloadTooLarge(ValueError):
    """A payload is bigger than the topic's ``max_payload``."""


class _Call:
    """One publish()/publish_many() call: its messages' ids once committed."""

    __slots__ = ("payloads", "ids", "error")

    def __init__(self, payloads: list[bytes]):
        self.payloads = payloads
        self.ids: list[MessageId] = []
        self.error: BaseException | None = None

    @property
    def settled(self) -> bool:
        return self.error is not None or len(self.ids) == len(self.payloads)


class Topic:
    """A topic at ``prefix``; see module docstring. Thread-safe. ``batched``:
    record the batched id format if this publisher is the topic's first
    (otherwise, and by default, it follows the format the topic records)."""

    def __init__(self, backend: Backend, prefix: str, *, retention: float = 3600.0,
                 max_messages: int = 10000, max_payload: int = 65536, trim_every: int = 256,
                 clock: Callable[[], float] = time.time, batched: bool = False):
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
        self.batched = batched  # the format wanted if this publisher creates the topic
        self.format_key = self.prefix + "format"
        self.head_key = self.prefix + "head"
        self.msg_prefix = self.prefix + "msg/"
        self.msg_end = prefix_end(self.msg_prefix)
        self._lock = threading.Condition()  # guards the fields below
        self._waiting: collections.deque[tuple[_Call, int]] = collections.deque()  # (call, index)
        self._committing = False  # one caller at a time sends the waiting messages
        self._head = (0, 0)  # (mod revision, seq) of head as last seen; 0: missing
        self._format: tuple[IdFormat, int] | None = None  # and the key's mod revision, once read
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
        """Store ``data`` as the next message and return its id once
        committed. Raises :class:`PayloadTooLarge` before writing anything
        if it is too big. Concurrent callers share transactions in the
        batched format only; in the revision format the id is the store
        revision of this message's own transaction."""
        return self.publish_many([data])[0]

    def publish_many(self, payloads: Iterable[bytes]) -> list[MessageId]:
        """Store ``payloads`` as messages, in this order, one transaction
        each (revision format) or in as few transactions as the batch limits
        allow (batched format), in the topic's format (another publisher's messages
        may come between two of them), and return their ids once all are
        committed. Every payload is checked before anything is
        written. If a transaction fails, its error is raised and the rest of
        the call is not written: a prefix of ``payloads`` may be published
        (an error from etcd may also hide a commit, as for any write)."""
        call = _Call([self._checked(data) for data in payloads])
        if not call.payloads:
            return []
        due = False
        with self._lock:
            self._waiting.extend((call, index) for index in range(len(call.payloads)))
        while True:
            with self._lock:
                self._lock.wait_for(lambda: call.settled or not self._committing)
                if call.settled:
                    break
                self._committing = True
            try:
                if self._load_format(call):
                    with self._lock:
                        batch = self._take_batch()
                    due = self._commit(batch) or due
            finally:
                with self._lock:
                    self._committing = False
                    self._lock.notify_all()
        if due:
            try:
                self.trim()
            except Exception as exc:  # the messages are published; trimming is best effort
                log.warning("topic %s: trimming failed: %s", self.prefix, exc)
        if call.error is not None:
            raise call.error
        return call.ids

    def _checked(self, data: bytes) -> bytes:
        if isinstance(data, (bytearray, memoryview)):
            data = bytes(data)
        if not isinstance(data, bytes):
            raise TypeError(f"payload must be bytes, got {type(data).__name__}")
        if len(data) > self.max_payload:
            raise PayloadTooLarge(f"payload of {len(data)} bytes exceeds the topic's max_payload "
                                  f"of {self.max_payload} bytes ({self.prefix})")
        return data

    @property
    def id_format(self) -> IdFormat | None:
        """The topic's id format as this publisher last read it (None before its first publish)."""
        return self._format[0] if self._format else None

    def _load_format(self, call: _Call) -> bool:
        """Read (or record) the topic's format unless known; on failure
        fail ``call`` (its waiting messages are then skipped) and say False."""
        if self._format is not None:
            return True
        try:
            self._format = resolve_format(self.backend, self.prefix, batched=self.batched)
        except BaseException as exc:
            with self._lock:
                call.error = call.error or exc
            if not isinstance(exc, Exception):
                raise
            return False
        if self.batched and self._format[0] is not IdFormat.BATCHED:
            log.info("topic %s: recorded in %s format: publishing one message per transaction",
                     self.prefix, self._format[0].value)
        return True

    def _take_batch(self) -> list[tuple[_Call, int]]:
        """The oldest waiting messages that fit one transaction (at least
        one; exactly one in revision format), skipping those of calls that
        already failed. Under the lock, with the format known."""
        batch: list[tuple[_Call, int]] = []
        size = 0
        limit = MAX_BATCH if self._format and self._format[0] is IdFormat.BATCHED else 1
        while self._waiting and len(batch) < limit:
            call, index = self._waiting[0]
            length = len(call.payloads[index])
            if call.error is None and batch and size + length > MAX_BATCH_BYTES:
                break
            self._waiting.popleft()
            if call.error is None:
                batch.append((call, index))
                size += length
        return batch

    def _commit(self, batch: list[tuple[_Call, int]]) -> bool:
        """Write ``batch`` in one transaction (retrying a lost race on
        ``head``), give each message its id or each call the error; return
        whether a trim is due. Runs on one caller's thread at a time."""
        if not batch:
            return False
        try:
            written = self._write(batch)
        except BaseException as exc:  # raised by the callers it belongs to (who wait for it)
            with self._lock:
                for call, _ in batch:
                    call.error = call.error or exc
            if not isinstance(exc, Exception):
                raise  # KeyboardInterrupt, SystemExit: this thread stops too
            return False
        with self._lock:
            if written is None:  # the format changed: send them again in the new one
                self._waiting.extendleft(reversed(batch))
                return False
            revision, last_seq, batched = written
            for offset, (call, _) in enumerate(batch):  # a call's messages come in order
                call.ids.append(revision * ID_SCALE + offset if batched else revision)
            if revision > self._head[0]:
                self._head = (revision, last_seq)
            before, self._published = self._published, self._published + len(batch)
            return (before // self.trim_every != self._published // self.trim_every
                    or self.clock() >= self._next_trim_at)

    def _write(self, batch: list[tuple[_Call, int]]) -> tuple[int, int, bool] | None:
        """One transaction writing ``batch`` after the current head in the
        topic's format; return (its revision, the last sequence number it
        wrote, whether batched), or None (nothing written, format forgotten)
        if the ``format`` key changed since it was read."""
        backoff = CONFLICT_RETRY.attempts(f"publish to {self.prefix!r}")
        with self._lock:
            head_mod, head_seq = self._head
        assert self._format is not None
        id_format, format_mod = self._format
        batched = id_format is IdFormat.BATCHED
        while True:
            last = head_seq + len(batch)
            ms = int(self.clock() * 1000)
            guards = [mod_revision(self.format_key, "=", format_mod),
                      mod_revision(self.head_key, "=", head_mod) if head_mod else missing(self.head_key)]
            ops: list[Op] = [Put(self.head_key, str(last).encode())]
            ops += [Put(f"{self.seq_key(head_seq + 1 + offset)}-{ms:013d}" + (f"-{offset:03d}" if batched else ""),
                        call.payloads[index]) for offset, (call, index) in enumerate(batch)]
            if last > self.max_messages:  # keep the newest max_messages, in the same write
                ops.append(Delete(self.msg_prefix, self.seq_key(last - self.max_messages + 1)))
            result = self.backend.txn(guards, ops, [Get(self.head_key), Get(self.format_key)])
            if result.succeeded:
                return result.revision, last, batched
            fresh, recorded = result.responses
            if not recorded or recorded[0].mod_revision != format_mod:
                self._format = None  # resolved again by the next round of publish_many
                return None
            head = fresh[0] if fresh else None
            if backoff.wait() > 0.001:  # paused: the head we got is likely stale
                head = self.backend.get(self.head_key)
            head_mod, head_seq = (head.mod_revision, parse_count(head)) if head else (0, 0)

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
                if not is_message_key(kv.key):
                    continue  # not ours: deleted with the messages around it
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
        oldest_id = message_id(oldest_kept) if oldest_kept else (revision + 1) * ID_SCALE
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
        from .topic_subscribe import Subscription

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
        kvs = [kv for kv in retained.kvs if is_message_key(kv.key)]
        ids = [message_id(kv) for kv in kvs]
        later = [kv for kv, id_ in zip(kvs, ids) if id_ > after_id]
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
        if not head.kvs:
            return 0
        try:
            batched = read_format(self.backend, self.prefix, revision=revision) is IdFormat.BATCHED
        except BadTopicFormat:  # only decides whether to warn
            batched = False
        return head.kvs[0].mod_revision * (ID_SCALE if batched else 1)  # the last write's first id


def __getattr__(name: str) -> object:
    # QueueConsumer and Subscription live in modules that import this one
    if name == "QueueConsumer":
        from .topic_queue import QueueConsumer

        return QueueConsumer
    if name == "Subscription":
        from .topic_subscribe import Subscription

        return Subscription
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
