"""A distributed ``sync.WaitGroup`` on one counter key.

The key holds the number of outstanding tasks as a decimal string (see
:mod:`.counter`); a missing key counts as zero.

* :meth:`WaitGroup.add` / :meth:`~WaitGroup.done` change it atomically
  (optimistic transaction on the key's mod revision). A change that would
  take it below zero raises :class:`WaitGroupNegative` and writes nothing:
  that is a bug in the caller (more ``done`` than ``add``), like Go's panic,
  so it is a ``ValueError`` and deliberately *not* a ``CoordError`` (code
  that retries on coordination errors must not retry it).
* :meth:`WaitGroup.wait` never polls: it reads the key at revision R; if the
  count is zero it returns True at once, else it watches the key from R+1
  and returns True as soon as an event shows zero (or a delete). Every
  waiter sees every event, so every waiter returns when the count touches
  zero, even if it goes up again right after. A broken watch resumes from
  the last revision seen + 1; if that history was compacted it re-reads the
  key (a zero that came and went inside the compacted window is then
  missed: the waiter keeps waiting for the next one). With ``timeout`` it
  returns False when the time is up.

Limits: the count is a plain number, not a set of task ids: a worker that
dies before ``done()`` leaves the group waiting forever (pair it with a
lease-based recipe if tasks can die); reaching zero leaves the key at "0"
(re-usable), :meth:`WaitGroup.delete` removes it.
"""

from __future__ import annotations

import threading

from ..coord.base import Backend
from ..coord.follow import Follower
from ..coord.types import EventType, WatchBatch
from .counter import Counter, parse_count


class WaitGroupNegative(ValueError):
    """``done()``/``add(-n)`` would take the counter below zero."""


class WaitGroup:
    """See module docstring. ``name_key`` is the full key of the counter."""

    def __init__(self, backend: Backend, name_key: str, *, retry_interval: float = 0.5):
        self.backend = backend
        self.key = name_key
        self.retry_interval = retry_interval
        self._counter = Counter(backend, name_key)

    def add(self, n: int = 1) -> int:
        """Add ``n`` (may be negative) and return the new count; raises
        :class:`WaitGroupNegative` (writing nothing) if it would go below 0."""
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"n must be an int, got {type(n).__name__}")

        def change(current: int) -> int:
            if current + n < 0:
                raise WaitGroupNegative(
                    f"wait group {self.key!r}: count {current} + {n} would be negative")
            return current + n
        return self._counter.update(change)

    def done(self) -> int:
        """One task finished: ``add(-1)``."""
        return self.add(-1)

    def count(self) -> int:
        return self._counter.get()

    def delete(self) -> None:
        """Remove the key (the count reads 0 again; waiters return)."""
        self.backend.delete(self.key)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the count is zero: True, or False after ``timeout``
        seconds. The first read raises ``CoordError`` if the store is down;
        later watch failures are retried until the timeout."""
        first = self.backend.range(self.key)
        if parse_count(first.kvs[0] if first.kvs else None) == 0:
            return True
        reached = threading.Event()

        def resync() -> int:  # after a compaction: the key as it is now
            result = self.backend.range(self.key)
            if parse_count(result.kvs[0] if result.kvs else None) == 0:
                reached.set()
            return result.revision

        def on_batch(batch: WatchBatch) -> bool:
            for event in batch.events:
                if event.type is EventType.DELETE or event.kv.value.strip() == b"0":
                    reached.set()
            return False

        follower = Follower(self.backend, self.key, None, resync=resync, on_batch=on_batch,
                            start_revision=first.revision + 1, name=f"waitgroup:{self.key}",
                            retry_interval=self.retry_interval)
        follower.start()
        try:
            return reached.wait(timeout)
        finally:
            follower.stop()

    def __repr__(self) -> str:
        return f"WaitGroup({self.key!r})"
