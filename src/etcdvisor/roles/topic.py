"""``type: topic``: one child run per message published to a topic.

The topic lives at ``topics/<topic>/`` (see :mod:`etcdvisor.recipes.topic`).

* ``delivery: queue``: the member is a :class:`QueueConsumer` of the group
  named after the role; each message is claimed by exactly one member (on
  the member's lease) and acknowledged when its run exits 0. A member that
  crashes mid-run loses its claims with its lease and the messages are
  redelivered to another member (at-least-once).
* ``delivery: broadcast``: every member runs every message published while
  it runs; a member with a stable ``member.id`` resumes after a restart
  from its cursor ``topics/<topic>/cursors/<role>/<member>`` (at-least-once
  for retained messages).

Claims and acks are batched: the consumer thread claims as many ready
messages as there is room for in one transaction
(``QueueConsumer.get_many``), and the acks of runs that ended while an ack
write was in flight go together in the next one (at most one ack write is
queued at a time, so each carries every ack waiting when it starts). While
runs are short (their average under ``SHORT_RUN``), a queue member claims
up to ``concurrency`` messages *ahead* of its free run slots, so a slot
that frees starts the next run without waiting for a claim round trip; a
message claimed ahead that finds no slot within ``PREFETCH_HOLD`` seconds
is released (redelivered, maybe to another member). Those messages wait on
this member meanwhile: with long runs there is no claiming ahead.

The payload goes to the child's stdin as bytes (never argv, never a shell),
with ``TOPIC``, ``MESSAGE_ID`` and ``ATTEMPT`` in the environment. At most
``concurrency`` runs at once per member: a consumer thread takes a permit
before fetching a message, and the loop returns it when the run ends. A run
that exits non-zero is retried after a backoff until ``max_attempts`` runs,
then given up with a log line (acknowledged, not redelivered). A message
larger than the role's ``max_payload`` (published by a tool that did not
check) is refused the same way, without running the command.

States of a message on this member: FETCHED -> (WAITING ->) RUNNING -> (BACKOFF ->
RUNNING)* -> DONE (acked) | GIVEN_UP (acked, logged) | RELEASED (shutdown).
"""

from __future__ import annotations

import collections
import logging
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from ..config import RoleSpec
from ..coord.errors import CoordError
from ..coord.records import decimal
from ..coord.session import SessionEvent, SessionEventKind
from ..process.backoff import RestartBackoff
from ..process.slot import Exited, SlotEvent, SpawnFailed, Stopped
from ..process.spawn import ChildSpec, ChildVars
from ..recipes.topic import Message, Topic
from ..recipes.topic_queue import QueueConsumer
from .base import RoleRunner, RuntimeContext, describe

if TYPE_CHECKING:  # broadcast roles load it when they subscribe (recipes/topic.py)
    from ..recipes.topic_subscribe import Subscription

log = logging.getLogger("etcdvisor")

SHORT_RUN = 0.25  # s: runs shorter than this on average make claiming ahead worth a round trip
PREFETCH_HOLD = 1.0  # s a message claimed ahead may wait for a run slot before it is released


@dataclass(frozen=True)
class Delivered:
    message: Message


@dataclass
class _Run:
    message: Message
    attempt: int = 1
    retry_at: float | None = None  # set while waiting to retry
    slot: bool = False  # holds one of the role's ``concurrency`` run slots (WAITING until then)
    delivered_at: float = 0.0
    may_give_back: bool = True  # False once giving it back failed: it runs here
    spec: ChildSpec | None = field(default=None, repr=False)


class TopicRunner(RoleRunner):
    def __init__(self, spec: RoleSpec, ctx: RuntimeContext):
        super().__init__(spec, ctx)
        self.topic_name = self.spec.topic or self.name
        self.topic = Topic(self.ctx.backend, self.ctx.keys.topic(self.topic_name),
                           max_payload=self.spec.max_payload or 65536)
        self.concurrency = int(self.spec.concurrency or 1)
        self.max_attempts = int(self.spec.max_attempts or 5)
        self.backoff = RestartBackoff(initial=self.spec.backoff.initial, maximum=self.spec.backoff.max)
        self.runs: dict[str, _Run] = {}
        self.processed = 0
        self.given_up = 0
        self._room = threading.Condition()  # guards _held: claims held or being claimed
        self._held = 0
        self._ahead = False  # claim up to `concurrency` messages ahead (set by the loop, read by the fetcher)
        self._run_time: float | None = None  # average run duration (loop thread)
        self._waiting: collections.deque[str] = collections.deque()  # runs without a slot, oldest first
        self._stop = threading.Event()
        self.queue = self.spec.delivery != "broadcast"
        self.cursor_key = self.ctx.keys.topic_cursor(self.topic_name, self.name, self.ctx.member_id)
        self.source: QueueConsumer | Subscription | None = None  # made by start(): queue or broadcast
        self._acks: list[Message] = []  # finished runs not yet in an ack write (loop thread)
        self._acking = False  # an ack effect is queued or running (loop thread)

    def start(self) -> None:
        if self.queue:
            self.source = QueueConsumer(self.topic, self.name, self.ctx.session,
                                        name=self.ctx.member_id)
        else:
            self.source = self.topic.subscribe(self._broadcast_cursor())
        threading.Thread(target=self._fetch_loop, daemon=True, name=f"topic:{self.name}").start()

    def _started_source(self) -> QueueConsumer | Subscription:
        """The message source, made by :meth:`start` (which every user of it follows)."""
        if self.source is None:
            raise RuntimeError(f"role {self.name}: the topic is read before start()")
        return self.source

    def _consumer(self) -> QueueConsumer:
        """The source as the queue consumer :meth:`start` made: called only in queue mode
        (``self.queue``), where claims are released and acknowledged."""
        return cast("QueueConsumer", self._started_source())

    def _broadcast_cursor(self) -> int | None:
        try:
            kv = self.ctx.backend.get(self.cursor_key)
        except CoordError:
            return None
        return decimal(kv.value) if kv is not None else None

    def _fetch_loop(self) -> None:  # edge thread: only posts
        while not self._stop.is_set():
            room = self._reserve()
            if room == 0:
                continue
            messages: list[Message] = []
            while not messages and not self._stop.is_set():
                try:
                    messages = self._fetch(room)
                except CoordError as exc:
                    log.debug("role %s: fetch failed: %s", self.name, exc)
                    self._stop.wait(0.5)
            self._free(room - len(messages))
            if not messages:
                return
            for message in messages:
                self.post(Delivered(message))

    def _reserve(self) -> int:
        """Wait (at most 1 s) for room to claim; reserve it all and return how much."""
        with self._room:
            def limit() -> int:
                return self.concurrency * (2 if self._ahead else 1)

            self._room.wait_for(lambda: self._held < limit() or self._stop.is_set(), timeout=1.0)
            room = max(0, limit() - self._held)
            self._held += room
            return room

    def _free(self, count: int = 1) -> None:
        """``count`` claims are over (finished, released or never made)."""
        if count:
            with self._room:
                self._held -= count
                self._room.notify_all()

    def _fetch(self, limit: int) -> list[Message]:
        if self.queue:
            return self._consumer().get_many(limit, timeout=1.0)
        message = self._started_source().get(timeout=1.0)
        return [] if message is None else [message]

    # --- the loop side ----------------------------------------------------------
    def handle(self, payload: object, at: float) -> None:
        if isinstance(payload, Delivered):
            message = payload.message
            key = f"msg-{message.id}"
            if self.failed_reason or self._stop.is_set():
                self._release(message)
                self._free()
                return
            if len(message.data) > self.topic.max_payload:
                log.error("role %s: message %d has %d bytes, over max_payload %d: not run",
                          self.name, message.id, len(message.data), self.topic.max_payload)
                self.given_up += 1
                self._finish(key, _Run(message), "refused", tracked=False)
                return
            self.runs[key] = _Run(message, delivered_at=at)
            self._waiting.append(key)
            log.debug("role %s: message %d claimed (%d bytes): waiting for a run slot (%d waiting)",
                      self.name, message.id, len(message.data), len(self._waiting))

    def _assign_slots(self, now: float) -> None:
        """Give free run slots to waiting runs, oldest first; release those
        claimed ahead that waited longer than PREFETCH_HOLD."""
        busy = sum(1 for run in self.runs.values() if run.slot)
        while self._waiting and busy < self.concurrency:
            run = self.runs.get(self._waiting.popleft())
            if run is not None:
                run.slot, busy = True, busy + 1
        for key in [k for k in self._waiting if self._expired(k, now)]:
            self._waiting.remove(key)
            self._give_back(self.runs.pop(key))

    def _expired(self, key: str, now: float) -> bool:
        run = self.runs[key]
        return run.may_give_back and now - run.delivered_at > PREFETCH_HOLD

    def _give_back(self, run: _Run) -> None:
        """Release a message claimed ahead that found no slot; if the release
        fails we still hold its claim, so it waits for a slot here again."""
        def released(result: object, error: BaseException | None) -> None:
            if error is None:
                self._free()
                return
            log.warning("role %s: could not release message %d (%s): it runs here", self.name,
                        run.message.id, describe(error))
            key = f"msg-{run.message.id}"
            run.may_give_back = False
            self.runs[key] = run
            self._waiting.append(key)
        self.effect(f"release message {run.message.id}", lambda: self._consumer().release(run.message), released)

    def on_session(self, event: SessionEvent) -> None:
        """The lease our claims hung on is gone: messages not running now
        (claimed ahead, or waiting to retry) are no longer ours; another
        member (or we, claiming again) will run them."""
        if not self.queue or event.kind not in (SessionEventKind.LOST, SessionEventKind.NEW_LEASE):
            return
        gone = [key for key, run in self.runs.items() if not run.slot or run.retry_at is not None]
        for key in gone:
            run = self.runs.pop(key)
            self._release(run.message)  # a no-op on the store (the claim went with the lease); forgets it
            self._free()
        self._waiting = collections.deque(k for k in self._waiting if k in self.runs)
        if gone:
            self.say(f"lease lost: {len(gone)} message(s) claimed but not running are left to the group")

    def desired(self, now: float) -> dict[str, ChildSpec]:
        self._assign_slots(now)
        wanted: dict[str, ChildSpec] = {}
        for key, run in self.runs.items():
            if not run.slot:
                continue
            if run.retry_at is not None:
                if now < run.retry_at:
                    continue
                run.retry_at = None
                run.attempt += 1
            if run.spec is None or run.spec.vars.attempt != run.attempt:
                run_vars = ChildVars(topic=self.topic_name, message_id=run.message.id, attempt=run.attempt)
                run.spec = self.ctx.child_spec(self.spec, f"{self.name}#{run.message.id}", run_vars,
                                               stdin_data=run.message.data)
            wanted[key] = run.spec
        return wanted

    def restart_policy(self, key: str) -> str:
        return "never"  # retries are counted here, per message

    def on_slot_event(self, key: str, event: SlotEvent, now: float) -> None:
        run = self.runs.get(key)
        if run is None:
            return
        if isinstance(event, Exited):
            self._note_run_time(event.uptime)
            if event.code == 0:
                self._finish(key, run, "done")
            elif run.attempt >= self.max_attempts:
                log.error("role %s: giving up on message %d after %d attempts (last status %s)",
                          self.name, run.message.id, run.attempt, event.code)
                self.given_up += 1
                self._finish(key, run, "given up")
            else:
                run.retry_at = now + self.backoff.delay(run.attempt)
                self.say(f"message {run.message.id} failed with status {event.code} "
                         f"(attempt {run.attempt}/{self.max_attempts}); retrying in "
                         f"{run.retry_at - now:.1f}s")
        elif isinstance(event, SpawnFailed):
            self.failed_reason = event.message
            self._stop.set()
            for other_key, other in list(self.runs.items()):
                self._release(other.message)
                self.runs.pop(other_key)
                self._free()
            self._waiting.clear()
        elif isinstance(event, Stopped) and event.code is not None and self._stop.is_set():
            self._release(run.message)
            self.runs.pop(key, None)

    def _finish(self, key: str, run: _Run, outcome: str, tracked: bool = True) -> None:
        message = run.message
        if self.queue:
            self._acks.append(message)
            self._queue_ack_effect()
        else:
            self.effect(f"move the cursor to message {message.id}",
                        lambda: self.ctx.backend.put(self.cursor_key, str(message.id)))
        self.processed += outcome == "done"
        if self.ctx.metrics is not None:
            self.ctx.metrics.topic_messages.labels(self.name, outcome.replace(" ", "_")).inc()
        if tracked:
            del self.runs[key]
        self._free()

    def _note_run_time(self, uptime: float) -> None:
        """Claim ahead (queue mode) while the runs' moving average is short."""
        average = uptime if self._run_time is None else 0.8 * self._run_time + 0.2 * uptime
        self._run_time = average
        ahead = self.queue and average < SHORT_RUN
        if ahead != self._ahead:
            with self._room:
                self._ahead = ahead
                self._room.notify_all()

    def _queue_ack_effect(self) -> None:
        """One ack write at a time; it carries every ack waiting when it is queued."""
        if self._acking or not self._acks:
            return
        batch, self._acks = self._acks, []
        self._acking = True
        shown = ", ".join(str(m.id) for m in batch[:5]) + (f" and {len(batch) - 5} more" if len(batch) > 5 else "")
        call = ((lambda: self._consumer().ack(batch[0])) if len(batch) == 1
                else (lambda: self._consumer().ack_many(batch)))
        self.effect(f"acknowledge message{'s' if len(batch) > 1 else ''} {shown}", call, self._acks_sent)

    def _acks_sent(self, result: object, error: BaseException | None) -> None:
        self._acking = False
        if error is not None:  # their claims end with the lease: redelivered, maybe run again
            log.warning("role %s: acknowledging failed: %s", self.name, describe(error))
        self._queue_ack_effect()

    def _release(self, message: Message) -> None:
        if self.queue:
            self.effect(f"release message {message.id}", lambda: self._consumer().release(message))

    def next_deadline(self) -> float | None:
        waits = [run.retry_at for run in self.runs.values() if run.retry_at is not None]
        waits += [self.runs[k].delivered_at + PREFETCH_HOLD for k in self._waiting if self.runs[k].may_give_back]
        return min(waits) if waits else None

    def stop(self) -> None:
        self._stop.set()
        if self.queue and self.source is not None and self._acks:
            try:  # finished runs first: close() would release (redeliver) their claims
                self._consumer().ack_many(self._acks)
                self._acks = []
            except Exception as exc:
                log.warning("role %s: acknowledging at stop failed: %s", self.name, exc)
        if self.source is not None:
            self.source.close()  # queue: releases claims of un-acked messages

    def status(self) -> dict[str, Any]:
        return {**super().status(), "state": "consuming", "topic": self.topic_name, "delivery": self.spec.delivery,
                "running": len([r for r in self.runs.values() if r.slot and r.retry_at is None]),
                "processed": self.processed, "given_up": self.given_up}
