"""Queue mode of a :class:`~.topic.Topic`: each message goes to one
consumer of a group.

A consumer claims a message with one transaction that creates
``claims/<group>/<id>`` on its session's lease *only if* neither that claim
nor ``done/<group>/<id>`` exists and the message is still retained; the
same transaction reads the payload. :meth:`QueueConsumer.ack` writes the
done marker and deletes the claim in one transaction. A claim whose holder
dies disappears with its lease; every consumer of the group watches the
topic, sees the claim go, and races to claim the message again.

States of a message, per group::

    PENDING -> CLAIMED     a consumer's claim transaction won
    CLAIMED -> DONE        ack(): done marker written, claim deleted
    CLAIMED -> PENDING     the claim's lease ended (crash, partition,
                           revoke) or release(): redelivered
    any -> TRIMMED         retention deleted the message (done markers of
                           trimmed messages are deleted by Topic.trim)

Delivery semantics (at least once, precisely):

* while a claim's lease is alive no other consumer of the group gets the
  message; consumers that do not die and keep their leases alive process
  every message exactly once;
* a message is delivered again only when its claim disappeared without a
  done marker: the holder died, its lease expired or was revoked, or it
  called ``release()``/``close()`` before ``ack()``. The first holder may
  still be working on it (a frozen process whose lease expired): then it is
  processed twice, and that holder's ``ack()`` returns False;
* a new group starts with every retained message that it has no done marker
  for (a work queue keeps its backlog); claims are taken in id order per
  consumer, but with several consumers processing order is not guaranteed;
* a message trimmed by retention before anyone claimed it is never
  delivered.

Limits: each consumer keeps the ids (not payloads) of retained messages,
claims and done markers of its group in memory; it watches the whole topic
prefix (other groups' claims are noise it skips).
"""

from __future__ import annotations

import heapq
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator

from ..coord.errors import CoordError, LeaseNotFound
from ..coord.follow import Follower
from ..coord.records import decimal
from ..coord.session import Session
from ..coord.types import Compare, Delete, EventType, Get, Op, Put, WatchBatch, create_revision, missing, prefix_end
from .topic import Topic
from .topic_format import Message, is_message_key, message_from
from .topic_format import message_id as id_of_message

log = logging.getLogger(__name__)

CLAIM_BATCH = 32  # claims per transaction: 3 compares each, under etcd's --max-txn-ops (128)
ACK_BATCH = 64  # acks per transaction: 2 ops each


class QueueConsumer:
    """One consumer of ``group`` on ``topic``; claims hang on ``session``'s
    lease (the session is the caller's; it is never closed here)."""

    def __init__(self, topic: Topic, group: str, session: Session, *, name: str | None = None,
                 retry_interval: float = 0.5):
        if not group or "/" in group:
            raise ValueError(f"queue group must be a non-empty name without '/', got {group!r}")
        self.topic = topic
        self.group = group
        self.session = session
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.retry_interval = retry_interval
        self._claims_prefix = f"{topic.prefix}claims/{group}/"
        self._done_prefix = f"{topic.prefix}done/{group}/"
        self._cond = threading.Condition()
        self._closed = threading.Event()
        self._retained: dict[int, tuple[str, int]] = {}  # message id -> (key, create revision)
        self._key_ids: dict[str, int] = {}
        self._claimed: set[int] = set()
        self._done: set[int] = set()
        self._ready: list[int] = []  # heap of ids that may be claimable
        self._queued: set[int] = set()
        self._in_flight: dict[int, int] = {}  # id -> lease our claim is on
        group_key = f"{topic.prefix}groups/{group}"
        topic.backend.txn([missing(group_key)], [Put(group_key, b"")])
        self._follower = Follower(topic.backend, topic.prefix, prefix_end(topic.prefix),
                                  resync=self._resync, on_batch=self._on_batch,
                                  name=f"queue:{topic.prefix}{group}", retry_interval=retry_interval)
        self._follower.start()

    # --- consuming ------------------------------------------------------------
    def get(self, timeout: float | None = None) -> Message | None:
        """Claim and return the next message, or None after ``timeout``
        seconds (or once closed). Store errors are retried until then."""
        messages = self.get_many(1, timeout)
        return messages[0] if messages else None

    def get_many(self, limit: int, timeout: float | None = None) -> list[Message]:
        """Claim and return up to ``limit`` messages (in id order, at least
        one; several only if they are claimable now), with one transaction
        when nobody races for them; ``[]`` after ``timeout`` seconds or once
        closed. Store errors are retried until then."""
        deadline = None if timeout is None else _now() + timeout
        limit = max(1, min(limit, CLAIM_BATCH))
        while not self._closed.is_set():
            candidates = self._next_candidates(limit, deadline)
            if not candidates:
                return []
            try:
                messages = self._claim_many(candidates)
            except CoordError as exc:
                for message_id in candidates:
                    self._push(message_id)
                level = logging.DEBUG if isinstance(exc, LeaseNotFound) else logging.WARNING
                log.log(level, "queue %s: cannot claim %d yet: %s", self.group, candidates[0], exc)
                if self._closed.wait(_bounded(self.retry_interval, deadline)):
                    return []
                continue
            if messages:
                return messages
        return []

    def messages(self) -> Iterator[Message]:
        """Claimed messages until :meth:`close`."""
        while True:
            message = self.get()
            if message is None:
                return
            yield message

    def ack(self, message: Message) -> bool:
        """Mark ``message`` processed by the group. True if our claim was
        still held; False if it was lost (the message may have been
        delivered to another consumer too). The done marker is written
        either way."""
        return self.ack_many([message])[0]

    def ack_many(self, messages: list[Message]) -> list[bool]:
        """:meth:`ack` for each of ``messages``, in one transaction per
        ``ACK_BATCH`` while every claim is still held (else one each)."""
        results: list[bool] = []
        for start in range(0, len(messages), ACK_BATCH):
            chunk = messages[start:start + ACK_BATCH]
            leases = [self._in_flight.pop(m.id, self.session.lease_id) for m in chunk]
            claims = [self.topic.claim_key(self.group, m.id) for m in chunk]
            marker = self.name.encode()
            puts = [Put(self.topic.done_key(self.group, m.id), marker) for m in chunk]
            if len(chunk) > 1:  # all held (the usual case): one write for the lot
                ops: list[Op] = [op for put, claim in zip(puts, claims) for op in (put, Delete(claim))]
                if self.topic.backend.txn([_lease_is(c, lease) for c, lease in zip(claims, leases)], ops).succeeded:
                    results += [True] * len(chunk)
                    continue
            for message, claim, lease, put in zip(chunk, claims, leases, puts):
                held = self.topic.backend.txn([_lease_is(claim, lease)], [put, Delete(claim)], [put]).succeeded
                if not held:
                    log.warning("queue %s: claim on message %d was lost before ack (possible double "
                                "processing)", self.group, message.id)
                results.append(held)
        return results

    def release(self, message: Message) -> bool:
        """Give the message back unprocessed (redelivered to the group)."""
        lease = self._in_flight.pop(message.id, self.session.lease_id)
        claim = self.topic.claim_key(self.group, message.id)
        return self.topic.backend.txn([_lease_is(claim, lease)], [Delete(claim)]).succeeded

    def close(self) -> None:
        """Stop following and release the claims of un-acked messages."""
        self._closed.set()
        with self._cond:
            self._cond.notify_all()
        self._follower.stop()
        for message_id, lease in list(self._in_flight.items()):
            claim = self.topic.claim_key(self.group, message_id)
            try:
                self.topic.backend.txn([_lease_is(claim, lease)], [Delete(claim)])
            except CoordError as exc:  # the claim then goes with the lease
                log.warning("queue %s: could not release message %d: %s", self.group, message_id, exc)
        self._in_flight.clear()

    def __enter__(self) -> QueueConsumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- claiming ---------------------------------------------------------------
    def _next_candidates(self, limit: int, deadline: float | None) -> list[int]:
        """Wait for a claimable id; return it with up to ``limit - 1`` more
        claimable now (lowest ids first)."""
        found: list[int] = []
        with self._cond:
            while not self._closed.is_set():
                while self._ready and len(found) < limit:
                    message_id = heapq.heappop(self._ready)
                    self._queued.discard(message_id)
                    if self._claimable(message_id):
                        found.append(message_id)
                if found:
                    return found
                remaining = None if deadline is None else deadline - _now()
                if remaining is not None and remaining <= 0:
                    return found
                self._cond.wait(remaining)
        return found

    def _claim_many(self, message_ids: list[int]) -> list[Message]:
        """Claim ``message_ids`` in one transaction if all are free; if one
        is not, retry with those the failed transaction saw free, then claim
        them one at a time. Returns the messages won, in id order. An id seen
        taken is dropped: if its claim goes without a done marker, the watch
        (not yet past that deletion, which is later than our read) pushes it again."""
        with self._cond:
            known = [(i, self._retained[i]) for i in message_ids if i in self._retained]
        for _ in range(2):
            if len(known) < 2:
                break
            won, free = self._claim_together(known)
            if won is not None:
                return won
            known = [k for k in known if k[0] in free]
        messages = []
        for message_id, retained in known:
            won, _ = self._claim_together([(message_id, retained)])
            messages += won or []
        return messages

    def _claim_together(self, known: list[tuple[int, tuple[str, int]]]) -> tuple[list[Message] | None, set[int]]:
        """One claim transaction for all of ``known`` ((id, (key, create
        revision)), ascending): (their messages, {}) if it won, else (None,
        the ids it saw neither claimed nor done; retention is checked next time)."""
        if not known:
            return [], set()
        lease, group = self.session.lease_id, self.group
        compares: list[Compare] = []
        ops: list[Op] = []
        for message_id, (key, created) in known:
            claim, done = self.topic.claim_key(group, message_id), self.topic.done_key(group, message_id)
            compares += [missing(claim), missing(done), create_revision(key, "=", created)]
            ops += [Put(claim, self.name.encode(), lease=lease), Get(key)]
        first, last = known[0][0], known[-1][0] + 1
        seen = [Get(self.topic.claim_key(group, first), self.topic.claim_key(group, last)),
                Get(self.topic.done_key(group, first), self.topic.done_key(group, last))]
        result = self.topic.backend.txn(compares, ops, seen if len(known) > 1 else [])
        if not result.succeeded:  # taken, done or trimmed: the watch tells us if it comes back
            taken = {_id_of(kv.key) for response in result.responses for kv in response}
            return None, {i for i, _ in known if i not in taken}
        messages = []
        for index, (message_id, _) in enumerate(known):
            self._in_flight[message_id] = lease
            messages.append(message_from(result.responses[2 * index + 1][0]))
        return messages, set()

    def _claimable(self, message_id: int) -> bool:
        return (message_id in self._retained and message_id not in self._done
                and message_id not in self._claimed)

    def _push(self, message_id: int) -> None:
        with self._cond:
            if message_id not in self._queued:
                self._queued.add(message_id)
                heapq.heappush(self._ready, message_id)
            self._cond.notify()

    # --- follower thread ---------------------------------------------------------
    def _resync(self) -> int:
        """Read messages, claims and done markers at one revision R."""
        backend = self.topic.backend
        messages = backend.range(self.topic.msg_prefix, self.topic.msg_end, keys_only=True)
        revision = messages.revision
        claims = backend.get_prefix(self._claims_prefix, revision=revision, keys_only=True)
        done = backend.get_prefix(self._done_prefix, revision=revision, keys_only=True)
        with self._cond:
            self._retained = {id_of_message(kv): (kv.key, kv.create_revision) for kv in messages.kvs
                              if is_message_key(kv.key)}
            self._key_ids = {key: id_ for id_, (key, _) in self._retained.items()}
            self._claimed = {_id_of(kv.key) for kv in claims.kvs}
            self._done = {_id_of(kv.key) for kv in done.kvs}
            self._ready, self._queued = [], set()
        for id_ in sorted(self._retained):
            self._push(id_)
        return revision

    def _on_batch(self, batch: WatchBatch) -> bool:
        topic = self.topic
        with self._cond:
            for event in batch.events:
                key, put = event.kv.key, event.type is EventType.PUT
                if key.startswith(topic.msg_prefix):
                    if put and is_message_key(key):
                        id_ = id_of_message(event.kv)
                        self._retained[id_] = (key, event.kv.create_revision)
                        self._key_ids[key] = id_
                        self._push(id_)
                    elif not put and key in self._key_ids:
                        self._retained.pop(self._key_ids.pop(key), None)
                elif key.startswith(self._claims_prefix):
                    message_id = _id_of(key)
                    if put:
                        self._claimed.add(message_id)
                    else:  # the claim went: unless done, it is claimable again
                        self._claimed.discard(message_id)
                        self._push(message_id)
                elif key.startswith(self._done_prefix):
                    (self._done.add if put else self._done.discard)(_id_of(key))
            self._cond.notify_all()
        return False


def _id_of(key: str) -> int:
    """The message id a claim or done key names; -1 (no message has it) for a key
    someone else wrote that names none (coord/records.py: keys are not trusted)."""
    number = decimal(key.rsplit("/", 1)[1])
    return -1 if number is None else number


def _lease_is(key: str, lease_id: int) -> Compare:
    return Compare(key, "lease", "=", lease_id)


def _now() -> float:
    return time.monotonic()


def _bounded(interval: float, deadline: float | None) -> float:
    return interval if deadline is None else max(0.0, min(interval, deadline - _now()))
