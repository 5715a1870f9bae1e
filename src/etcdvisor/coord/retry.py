"""One retry policy for store operations that failed (as kazoo's ``KazooRetry``).

A :class:`RetryPolicy` says how long to wait before the n-th retry: ``initial *
factor**(n-1)``, at most ``max_delay``, less a random part of up to ``jitter`` of it
(``jitter=1``: "full jitter", anywhere in ``[0, delay]``); ``first_at_once`` makes the
first retry go without waiting (an optimistic transaction that lost a race already
read the fresh value). It gives up after ``max_attempts`` tries in all or ``deadline``
seconds from the first, whichever comes first (None: never).

Two ways to use it:

* the decision loop never waits: a runner asks :meth:`RetryPolicy.delay` for the
  seconds until its next try and sets a deadline (``retry_at = now + delay``);
* a blocking recipe loop (counter, topic publish) takes :meth:`RetryPolicy.attempts`
  and calls :meth:`Attempts.wait` after each failure: it waits on a private
  ``Event`` (never ``time.sleep``) and raises :class:`RetriesExhausted` (a
  :class:`~etcdvisor.coord.errors.CoordError`) when the policy gives up.

The policies in use are named here, so that one place says how etcdvisor retries.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from .errors import CoordError

_MAX_EXPONENT = 64  # factor ** exponent overflows a float near 2**1024; delays are capped long before


class RetriesExhausted(CoordError):
    """A retried operation gave up (``max_attempts`` or ``deadline`` reached)."""


@dataclass(frozen=True)
class RetryPolicy:
    """How a failed operation is tried again; see the module docstring."""

    initial: float = 1.0
    factor: float = 1.0
    max_delay: float = 1.0
    jitter: float = 0.0
    max_attempts: int | None = None
    deadline: float | None = None
    first_at_once: bool = False

    def __post_init__(self) -> None:
        if self.initial < 0 or self.max_delay < 0 or (self.deadline is not None and self.deadline < 0):
            raise ValueError("retry times must be >= 0")
        if self.factor < 1:
            raise ValueError("retry factor must be >= 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("retry jitter must be in [0, 1]")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")

    def delay(self, failures: int, rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait after ``failures`` failures in a row (0 for none); ``rand``
        returns a float in [0, 1)."""
        if failures <= 0 or (self.first_at_once and failures == 1):
            return 0.0
        exponent = min(failures - (2 if self.first_at_once else 1), _MAX_EXPONENT)
        base = min(self.max_delay, self.initial * self.factor ** exponent)
        return base * (1.0 - self.jitter * rand()) if self.jitter else base

    def gives_up(self, failures: int, elapsed: float) -> bool:
        """True when no try follows ``failures`` failed tries made over ``elapsed`` seconds."""
        return ((self.max_attempts is not None and failures >= self.max_attempts)
                or (self.deadline is not None and elapsed >= self.deadline))

    def attempts(self, what: str, clock: Callable[[], float] = time.monotonic) -> Attempts:
        """A blocking retry loop's state for one operation (``what`` names it in errors)."""
        return Attempts(self, what, clock)


class Attempts:
    """The failures of one operation under a :class:`RetryPolicy` (a blocking loop's)."""

    def __init__(self, policy: RetryPolicy, what: str, clock: Callable[[], float] = time.monotonic):
        self.policy, self.what, self.clock = policy, what, clock
        self.failures = 0
        self.started = clock()
        self._never = threading.Event()

    def wait(self) -> float:
        """After a failure: wait the policy's delay and return the seconds waited (so a
        caller can re-read a value that went stale meanwhile), or raise
        :class:`RetriesExhausted` when the policy gives up."""
        self.failures += 1
        if self.policy.gives_up(self.failures, self.clock() - self.started):
            raise RetriesExhausted(f"{self.what}: gave up after {self.failures} conflicting attempts")
        pause = self.policy.delay(self.failures)
        if self.policy.deadline is not None:
            pause = min(pause, max(0.0, self.started + self.policy.deadline - self.clock()))
        if pause > 0:
            self._never.wait(pause)
        return pause


STORE_RETRY = RetryPolicy(initial=1.0)
"""A runner's store write or read that failed (claim, record, publish, registration): the
loop tries again 1 s later, for as long as the role runs (the lease rules stop the children
when the store stays away: docs/safety.md)."""

ALIVE_RECORD_RETRY = RetryPolicy(initial=1.0, factor=2.0, max_delay=8.0)
"""A sharded member's alive record: 1 s, doubling while it fails, at most 8 s."""

CONFLICT_RETRY = RetryPolicy(initial=0.004, factor=2.0, max_delay=0.05, jitter=1.0, max_attempts=200,
                             first_at_once=True)
"""An optimistic transaction that lost a race (counter, topic publish): the first retry at
once with the value the failed transaction read, then full jitter under a bound that
doubles from 4 ms to at most 50 ms; 200 tries in all."""
