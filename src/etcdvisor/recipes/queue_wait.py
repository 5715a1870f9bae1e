"""The queue-wait protocol, written once for :mod:`.lock` and :mod:`.election`.

A queue is the set of keys directly under ``prefix``; each contender owns one
key, ``<prefix><lease-id-hex>``, attached to a lease. Its place in line is
the key's **create revision** (never its name: docs/safety.md, rule 5)::

    enqueue   txn: if our key is missing, put it on our lease; read it back.
              Its create revision is our place in line (and, at the head,
              the fencing token). Idempotent for one lease.
    find      read the prefix at revision R. No key with a lower create
              revision: we are at the head. Else our *predecessor* is the key
              with the greatest create revision below ours.
    wait      watch only the predecessor from R+1 until it is deleted (one
              release wakes one waiter: no thundering herd, no polling);
              then find again (the predecessor may have left the line
              without the head having moved).
    withdraw  delete our key if it still has our create revision.

Outcomes of :meth:`WaitQueue.wait_turn` (an enum, :class:`WaitOutcome`):
``HEAD`` (our turn), ``TIMED_OUT`` (the deadline passed), ``CANCELLED``
(the caller's event was set). Our key vanishing while we wait (lease
expired or revoked) raises :class:`EntryLost`.

Guarantees:

* at most one live key is the head; a newer key never sorts before an
  older one, so the head's create revision grows from one head to the next;
* contenders reach the head in enqueue order;
* a broken watch stream (``Unavailable``) is retried every
  ``retry_interval`` until the deadline; a compacted start revision makes
  the waiter read the line again (nothing missed: docs/safety.md, rule 5).

Limits: withdrawing does not reach the store when it is unreachable; the
key then goes with its lease. The caller owns the lease and its keepalive.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ..coord.base import Backend, WatchStream
from ..coord.errors import Compacted, CoordError, Unavailable
from ..coord.types import (
    Delete,
    EventType,
    KeyValue,
    Put,
    create_revision,
    direct_children_by_create,
    missing,
)
from ..coord.types import Get as GetOp

log = logging.getLogger(__name__)


class Signal(threading.Event):
    """An event that also calls back when set: a waiter given one as ``cancel`` has
    its watch cancelled at once, with no thread polling the event (an idle candidate
    of an election costs nothing then)."""

    def __init__(self) -> None:
        super().__init__()
        self._callbacks: list[Callable[[], None]] = []
        self._callbacks_lock = threading.Lock()

    def set(self) -> None:
        super().set()
        with self._callbacks_lock:
            callbacks = list(self._callbacks)
        for callback in callbacks:
            callback()

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` when set (at once if set already); returns the unsubscribe."""
        with self._callbacks_lock:
            self._callbacks.append(callback)
        if self.is_set():
            callback()

        def unsubscribe() -> None:
            with self._callbacks_lock:
                if callback in self._callbacks:
                    self._callbacks.remove(callback)
        return unsubscribe


class EntryLost(CoordError):
    """Our key left the queue while we waited (lease expired or revoked)."""


class WaitOutcome(enum.Enum):
    HEAD = "head"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class QueueEntry:
    """Our place in line: ``token`` is the key's create revision."""

    key: str
    token: int
    lease: int


class WaitQueue:
    """The queue of contenders under ``prefix`` (see module docstring)."""

    def __init__(self, backend: Backend, prefix: str, *, name: str | None = None,
                 retry_interval: float = 0.2):
        if not prefix.endswith("/"):
            prefix += "/"
        self.backend = backend
        self.prefix = prefix
        self.name = name or f"queue:{prefix}"
        self.retry_interval = retry_interval

    def enqueue(self, lease_id: int, value: bytes = b"") -> QueueEntry:
        """Put our key on ``lease_id`` unless it exists (same lease: same
        key, same place). Raises :class:`EntryLost` when the key is gone at
        once (the lease died between the put and the read), ``LeaseNotFound``
        when the lease no longer exists."""
        key = f"{self.prefix}{lease_id:x}"
        result = self.backend.txn([missing(key)], [Put(key, value, lease_id), GetOp(key)], [GetOp(key)])
        found = result.responses[-1]
        if not found:
            raise EntryLost(f"{self.name}: key {key} vanished at once (lease lost?)")
        return QueueEntry(key=key, token=found[0].create_revision, lease=lease_id)

    def contenders(self, kvs: Iterable[KeyValue]) -> list[KeyValue]:
        """Direct children of the prefix in line order (create revision)."""
        return direct_children_by_create(self.prefix, kvs)

    def head(self) -> KeyValue | None:
        """The key at the head of the line, or None when the line is empty."""
        line = self.contenders(self.backend.get_prefix(self.prefix, keys_only=True).kvs)
        return line[0] if line else None

    def predecessor(self, entry: QueueEntry) -> tuple[KeyValue | None, int]:
        """The key just before ours (None: we are the head) and the revision
        of the read. One read. Raises :class:`EntryLost` when our key is
        gone."""
        result = self.backend.get_prefix(self.prefix, keys_only=True)
        line = self.contenders(result.kvs)
        if not any(kv.key == entry.key and kv.create_revision == entry.token for kv in line):
            raise EntryLost(f"{self.name}: our key {entry.key} vanished (lease expired or revoked)")
        earlier = [kv for kv in line if kv.create_revision < entry.token]
        return (earlier[-1] if earlier else None), result.revision

    def wait_turn(self, entry: QueueEntry, *, deadline: float | None = None,
                  cancel: threading.Event | None = None, blocking: bool = True) -> WaitOutcome:
        """Block until ``entry`` is the head. ``deadline`` is a
        ``time.monotonic()`` value; ``blocking=False`` looks once (a busy
        line is then ``TIMED_OUT``). Raises :class:`EntryLost`, and the
        store's errors other than ``Unavailable`` (retried until the
        deadline)."""
        while True:
            if cancel is not None and cancel.is_set():
                return WaitOutcome.CANCELLED
            try:
                predecessor, revision = self.predecessor(entry)
            except Unavailable as exc:
                if not blocking or not self._pause(deadline, cancel, exc):
                    if cancel is not None and cancel.is_set():
                        return WaitOutcome.CANCELLED
                    raise
                continue
            if predecessor is None:
                return WaitOutcome.HEAD
            if not blocking:
                return WaitOutcome.TIMED_OUT
            outcome = self.wait_deleted(predecessor.key, revision, deadline, cancel)
            if outcome is not None:
                cancelled = cancel is not None and cancel.is_set()
                return WaitOutcome.CANCELLED if cancelled else outcome

    def withdraw(self, entry: QueueEntry) -> bool:
        """Delete our key if it still has our create revision; True if it
        did. Store errors propagate."""
        result = self.backend.txn([create_revision(entry.key, "=", entry.token)], [Delete(entry.key)])
        return result.succeeded

    def still_ours(self, entry: QueueEntry) -> bool:
        kv = self.backend.get(entry.key)
        return kv is not None and kv.create_revision == entry.token

    # --- waiting -------------------------------------------------------------------
    def wait_deleted(self, key: str, revision: int, deadline: float | None = None,
                     cancel: threading.Event | None = None) -> WaitOutcome | None:
        """Watch ``key`` (our predecessor, read at ``revision``) from ``revision + 1``
        until it is deleted. Returns None to look again (deleted, or the stream was
        interrupted), or the outcome that ends the wait. Store errors other than
        ``Unavailable`` and ``Compacted`` propagate."""
        if _expired(deadline):
            return WaitOutcome.TIMED_OUT
        try:
            stream = self.backend.watch(key, start_revision=revision + 1)
        except Compacted:
            return None
        except Unavailable as exc:
            return None if self._pause(deadline, cancel, exc) else WaitOutcome.TIMED_OUT
        done = threading.Event()
        undo: list[Callable[[], None]] = []
        if cancel is not None and not isinstance(cancel, Signal):
            # a plain event can only be polled: a guard thread looks at it (and the deadline)
            threading.Thread(target=_guard, args=(stream, done, deadline, cancel), daemon=True,
                             name=f"{self.name}:guard").start()
        else:  # nothing polls: the signal cancels the stream, a timer ends it at the deadline
            if cancel is not None:
                undo.append(cancel.subscribe(stream.cancel))
            if deadline is not None:
                timer = threading.Timer(max(0.0, deadline - time.monotonic()), stream.cancel)
                timer.daemon = True
                timer.name = f"{self.name}:deadline"
                timer.start()
                undo.append(timer.cancel)
        try:
            for batch in stream:
                if any(ev.type is EventType.DELETE for ev in batch.events):
                    return None
        except Compacted:
            return None
        except Unavailable as exc:
            return None if self._pause(deadline, cancel, exc) else WaitOutcome.TIMED_OUT
        finally:
            done.set()
            for step in undo:
                step()
            stream.cancel()
        # the stream ended: our guard (deadline or cancel), or the backend
        # was closed (the next read raises Closed)
        if cancel is not None and cancel.is_set():
            return WaitOutcome.CANCELLED
        return WaitOutcome.TIMED_OUT if _expired(deadline) else None

    def _pause(self, deadline: float | None, cancel: threading.Event | None, exc: CoordError) -> bool:
        """Wait a retry interval (bounded by the deadline); False when the
        deadline passed or the wait was cancelled."""
        log.debug("%s: store unavailable while waiting (%s), retrying", self.name, exc)
        wait = self.retry_interval
        if deadline is not None:
            wait = min(wait, deadline - time.monotonic())
            if wait <= 0:
                return False
        return not (cancel or threading.Event()).wait(wait)


def _expired(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() >= deadline


def _guard(stream: WatchStream, done: threading.Event, deadline: float | None,
           cancel: threading.Event | None) -> None:
    """Cancel ``stream`` at the deadline or when ``cancel`` is set; ends
    when ``done`` is set. Polls at 0.1 s: both events can't be waited on
    together."""
    while not done.is_set():
        if (cancel is not None and cancel.is_set()) or _expired(deadline):
            stream.cancel()
            return
        remaining = 0.1 if deadline is None else min(0.1, max(deadline - time.monotonic(), 0.0))
        done.wait(remaining)
