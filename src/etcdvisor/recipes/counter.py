"""A distributed integer counter kept in one key (value: decimal string).

Guarantees:

* every update (:meth:`Counter.inc`, :meth:`~Counter.dec`,
  :meth:`~Counter.compare_and_set`, :meth:`~Counter.update`) is atomic:
  a read-modify-write made with a transaction that only applies if the key's
  ``mod_revision`` is still the one that was read (optimistic concurrency).
  A lost race is retried at once with the fresh value that the failed
  transaction returned; further losses wait a jittered backoff that grows
  with the number of failures (then re-read the value), so contention
  spreads out instead of colliding again;
* a missing key reads as 0; the value written is always canonical
  (``str(int)``), so any reader (``etcdctl get``) sees a plain number.

Limits:

* after ``max_attempts`` lost races in a row the update gives up with
  :class:`Contention` (a :class:`CoordError`) and writes nothing;
* one key is a serialisation point: throughput under contention is bounded
  by the store's write rate for that key (a few thousand updates per second
  on one local etcd), not by the number of writers;
* a write whose answer was lost (timeout) may or may not have been applied:
  the caller gets the ``CoordError`` and must not blindly retry an ``inc``
  if it needs exactly-once (use :meth:`compare_and_set` for that).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from ..coord.base import Backend
from ..coord.errors import CoordError
from ..coord.retry import CONFLICT_RETRY, RetriesExhausted
from ..coord.types import Get, KeyValue, Put, missing, mod_revision

Contention = RetriesExhausted
"""An optimistic update lost too many races in a row (raised by the retry policy,
:data:`etcdvisor.coord.retry.CONFLICT_RETRY`)."""


class BadCounterValue(CoordError, ValueError):
    """The key holds something that is not a decimal integer."""


class Abort(Exception):
    """Raised by an :meth:`Counter.update` function to give up without
    writing; :meth:`Counter.update` then returns ``None``."""


def parse_count(kv: KeyValue | None) -> int:
    """The integer a counter key holds (0 when missing)."""
    if kv is None:
        return 0
    try:
        return int(kv.value.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        shown = kv.value[:40]
        raise BadCounterValue(f"counter key {kv.key!r} holds {shown!r}, not a decimal integer") from None


def _check_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    return value


class Counter:
    """A counter at ``key``; see module docstring. Safe to share between
    threads (each call is independent)."""

    def __init__(self, backend: Backend, key: str, *, max_attempts: int = 200):
        self.backend = backend
        self.key = key
        self.max_attempts = max_attempts

    def get(self) -> int:
        """The current value (0 when the key does not exist)."""
        return parse_count(self.backend.get(self.key))

    def set(self, value: int) -> None:
        """Overwrite the value unconditionally."""
        self.backend.put(self.key, str(_check_int(value, "value")))

    def inc(self, n: int = 1) -> int:
        """Add ``n`` atomically and return the new value."""
        step = _check_int(n, "n")
        return self._update(lambda current: current + step)

    def dec(self, n: int = 1) -> int:
        """Subtract ``n`` atomically and return the new value."""
        step = _check_int(n, "n")
        return self._update(lambda current: current - step)

    def compare_and_set(self, expected: int, new: int) -> bool:
        """Set ``new`` only if the value is ``expected`` (a missing key counts
        as 0); True if it was set."""
        _check_int(expected, "expected")
        _check_int(new, "new")

        def swap(current: int) -> int:
            if current != expected:
                raise Abort
            return new
        return self.update(swap) is not None

    def update(self, change: Callable[[int], int]) -> int | None:
        """Atomically replace the value ``v`` by ``change(v)`` and return the
        new value. ``change`` may run several times (once per attempt) and
        must have no side effects; it raises :class:`Abort` to give up
        (returns None) or any other exception to propagate it. Either way
        nothing is written."""
        try:
            return self._update(change)
        except Abort:
            return None

    def _update(self, change: Callable[[int], int]) -> int:
        """:meth:`update`, where :class:`Abort` propagates (typed for changes that never abort)."""
        backoff = dataclasses.replace(CONFLICT_RETRY, max_attempts=self.max_attempts).attempts(f"counter {self.key!r}")
        kv = self.backend.get(self.key)
        while True:
            new = _check_int(change(parse_count(kv)), "the new value")
            guard = mod_revision(self.key, "=", kv.mod_revision) if kv else missing(self.key)
            result = self.backend.txn([guard], [Put(self.key, str(new).encode())], [Get(self.key)])
            if result.succeeded:
                return new
            # lost the race: the failure branch read the fresh value for us,
            # but after a pause it is likely stale again: read it anew then
            fresh = result.responses[0]
            kv = fresh[0] if fresh else None
            if backoff.wait() > 0.001:
                kv = self.backend.get(self.key)

    def __repr__(self) -> str:
        return f"Counter({self.key!r})"
