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

The payload goes to the child's stdin as bytes (never argv, never a shell),
with ``TOPIC``, ``MESSAGE_ID`` and ``ATTEMPT`` in the environment. At most
``concurrency`` runs at once per member: a consumer thread takes a permit
before fetching a message, and the loop returns it when the run ends. A run
that exits non-zero is retried after a backoff until ``max_attempts`` runs,
then given up with a log line (acknowledged, not redelivered). A message
larger than the role's ``max_payload`` (published by a tool that did not
check) is refused the same way, without running the command.

States of a message on this member: FETCHED -> RUNNING -> (BACKOFF ->
RUNNING)* -> DONE (acked) | GIVEN_UP (acked, logged) | RELEASED (shutdown).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from ..coord.errors import CoordError
from ..process.backoff import RestartBackoff
from ..process.slot import Exited, SlotEvent, SpawnFailed, Stopped
from ..process.spawn import ChildSpec
from ..recipes.topic import Message, Topic
from ..recipes.topic_queue import QueueConsumer
from .base import RoleRunner

log = logging.getLogger("etcdvisor")


@dataclass(frozen=True)
class Delivered:
    message: Message


@dataclass
class _Run:
    message: Message
    attempt: int = 1
    retry_at: float | None = None  # set while waiting to retry
    spec: ChildSpec | None = field(default=None, repr=False)


class TopicRunner(RoleRunner):
    def __init__(self, spec, ctx):
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
        self._permits = threading.Semaphore(self.concurrency)
        self._stop = threading.Event()
        self.queue = self.spec.delivery != "broadcast"
        self.cursor_key = f"{self.topic.prefix}cursors/{self.name}/{self.ctx.member_id}"
        self.source = None

    def start(self) -> None:
        if self.queue:
            self.source = QueueConsumer(self.topic, self.name, self.ctx.session,
                                        name=self.ctx.member_id)
        else:
            self.source = self.topic.subscribe(self._broadcast_cursor())
        threading.Thread(target=self._fetch_loop, daemon=True, name=f"topic:{self.name}").start()

    def _broadcast_cursor(self) -> int | None:
        try:
            kv = self.ctx.backend.get(self.cursor_key)
        except CoordError:
            return None
        return int(kv.value) if kv is not None and kv.value.isdigit() else None

    def _fetch_loop(self) -> None:  # edge thread: only posts
        while not self._stop.is_set():
            if not self._permits.acquire(timeout=1.0):
                continue
            message = None
            while message is None and not self._stop.is_set():
                try:
                    message = self.source.get(timeout=1.0)
                except CoordError as exc:
                    log.debug("role %s: fetch failed: %s", self.name, exc)
                    self._stop.wait(0.5)
            if message is None:
                self._permits.release()
                return
            self.post(Delivered(message))

    # --- the loop side ----------------------------------------------------------
    def handle(self, payload, at: float) -> None:
        if isinstance(payload, Delivered):
            message = payload.message
            key = f"msg-{message.id}"
            if self.failed_reason or self._stop.is_set():
                self._release(message)
                return
            if len(message.data) > self.topic.max_payload:
                log.error("role %s: message %d has %d bytes, over max_payload %d: not run",
                          self.name, message.id, len(message.data), self.topic.max_payload)
                self.given_up += 1
                self._finish(key, _Run(message), "refused", tracked=False)
                return
            self.runs[key] = _Run(message)

    def desired(self, now: float) -> dict[str, ChildSpec]:
        wanted = {}
        for key, run in self.runs.items():
            if run.retry_at is not None:
                if now < run.retry_at:
                    continue
                run.retry_at = None
                run.attempt += 1
            if run.spec is None or run.spec.env.get("ATTEMPT") != str(run.attempt):
                env = {"TOPIC": self.topic_name, "MESSAGE_ID": str(run.message.id),
                       "ATTEMPT": str(run.attempt)}
                run.spec = self.ctx.child_spec(self.spec, f"{self.name}#{run.message.id}", env,
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
                self._permits.release()
        elif isinstance(event, Stopped) and event.code is not None and self._stop.is_set():
            self._release(run.message)
            self.runs.pop(key, None)

    def _finish(self, key: str, run: _Run, outcome: str, tracked: bool = True) -> None:
        message = run.message
        if self.queue:
            self.effect(f"acknowledge message {message.id}", lambda: self.source.ack(message))
        else:
            self.effect(f"move the cursor to message {message.id}",
                        lambda: self.ctx.backend.put(self.cursor_key, str(message.id)))
        self.processed += outcome == "done"
        if self.ctx.metrics is not None:
            self.ctx.metrics.topic_messages.labels(self.name, outcome.replace(" ", "_")).inc()
        if tracked:
            del self.runs[key]
        self._permits.release()

    def _release(self, message: Message) -> None:
        if self.queue:
            self.effect(f"release message {message.id}", lambda: self.source.release(message))

    def next_deadline(self) -> float | None:
        waits = [run.retry_at for run in self.runs.values() if run.retry_at is not None]
        return min(waits) if waits else None

    def stop(self) -> None:
        self._stop.set()
        if self.source is not None:
            self.source.close()  # queue: releases claims of un-acked messages

    def status(self) -> dict:
        return {**super().status(), "topic": self.topic_name, "delivery": self.spec.delivery,
                "running": len([r for r in self.runs.values() if r.retry_at is None]),
                "processed": self.processed, "given_up": self.given_up}
