"""The KV facade's key watch (:mod:`etcdvisor.kv`): one key's changes, on
the never-miss loop (:class:`~etcdvisor.coord.follow.Follower`).

A *change* is a new value, a creation or a deletion (hms-hmetcd's ``Watch``);
rewriting the value the key already has is not one unless ``every_write``.
After a compacted gap the last known entry and the re-read one are compared,
and their difference is one change.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable

from .coord import Backend, KeyValue
from .coord.follow import Follower
from .coord.types import EventType, WatchBatch


class KeyChange(enum.Flag):
    """What happened to a watched key (combine with ``|`` to select)."""

    PUT = 1
    DELETE = 2
    ANY = PUT | DELETE


class WatchHandle:
    """A running :meth:`KV.watch_callback`; :meth:`cancel` stops it."""

    def __init__(self, follower: KeyFollower):
        self._follower = follower

    @property
    def active(self) -> bool:
        return self._follower.running()

    def cancel(self, timeout: float = 5.0) -> None:
        """Stop the watcher; safe from the callback itself and to call twice."""
        self._follower.stop(timeout)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the watcher stopped by itself; True if it did."""
        return self._follower.wait_stopped(timeout)


class KeyFollower:
    """The changes of one key after the initial read (made by the
    constructor, on the caller's thread), in order, on the never-miss loop
    (:class:`~etcdvisor.coord.follow.Follower`: resumes a broken stream from
    the last revision seen, re-reads and re-diffs after compaction).

    ``deliver(change, kv)`` runs on the follower's thread and returns True
    to stop. A put that leaves the value as it was is not delivered unless
    ``every_write``; after a re-read, the difference between the last known
    and the fresh entry is delivered as one change."""

    def __init__(self, backend: Backend, key: str,
                 deliver: Callable[[KeyChange, KeyValue | None], bool], *,
                 every_write: bool = False, on_stop: Callable[[], None] | None = None,
                 retry_interval: float = 0.2):
        self.key = key
        self.backend = backend
        self.deliver = deliver
        self.every_write = every_write
        self.on_stop = on_stop
        result = backend.range(key)
        self.current: KeyValue | None = result.kvs[0] if result.kvs else None
        self._stopped = threading.Event()
        self._follower = Follower(backend, key, None, resync=self._resync, on_batch=self._on_batch,
                                  start_revision=result.revision + 1, name=f"kv-watch:{key}",
                                  retry_interval=retry_interval)

    def start(self) -> KeyFollower:
        self._follower.start()
        return self

    def running(self) -> bool:
        return not self._stopped.is_set() and self._follower.is_alive()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop (safe from ``deliver`` itself and twice); ``on_stop`` runs once."""
        first = not self._stopped.is_set()
        self._stopped.set()
        self._follower.stop(timeout)
        if first and self.on_stop is not None:
            self.on_stop()

    def wait_stopped(self, timeout: float | None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.running():
            remaining = 0.2 if deadline is None else min(0.2, deadline - time.monotonic())
            if remaining <= 0:
                return False
            self._stopped.wait(remaining)
        return True

    # --- follower callbacks (follower thread) ------------------------------------------
    def _on_batch(self, batch: WatchBatch) -> bool:
        for event in batch.events:
            if self._stopped.is_set():
                return True
            fresh = event.kv if event.type is EventType.PUT else None
            if self._offer(fresh):
                self.stop()
                return True
        return False

    def _resync(self) -> int:
        result = self.backend.range(self.key)
        if self._offer(result.kvs[0] if result.kvs else None, resynced=True):
            self.stop()
        return result.revision

    def _offer(self, fresh: KeyValue | None, resynced: bool = False) -> bool:
        """Deliver the step from ``current`` to ``fresh`` if it is a change;
        True when the consumer wants to stop."""
        before, self.current = self.current, fresh
        if fresh is None:
            return before is not None and bool(self.deliver(KeyChange.DELETE, None))
        if before is not None and fresh.value == before.value:
            rewritten = fresh.mod_revision != before.mod_revision
            if not (self.every_write and rewritten):
                return False
        elif resynced and before is not None and fresh.mod_revision == before.mod_revision:
            return False
        return bool(self.deliver(KeyChange.PUT, fresh))
