"""Pure restart-delay math: exponential backoff with jitter and a reset after a good run.

No clocks and no global randomness here: callers pass uptimes and a random source, so
tests are exact. ``Slot`` uses this module; nothing here does I/O.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

# factor ** exponent overflows a float near 2**1024; delays are capped long before that.
_MAX_EXPONENT = 64


@dataclass(frozen=True)
class RestartBackoff:
    """Restart delays: ``initial * factor**(n-1)`` for the n-th consecutive quick exit,
    capped at ``maximum``, times a uniform jitter in ``[1-jitter, 1+jitter]``.

    Guarantees: ``delay(0) == 0`` (a child that had been healthy restarts at once);
    ``0 <= delay(n) <= maximum`` for every n (the cap is applied after jitter).
    ``reset_after``: a run that lasted at least this long is not a quick exit and resets
    the consecutive-failure count.
    """

    initial: float = 1.0
    maximum: float = 60.0
    factor: float = 2.0
    jitter: float = 0.2
    reset_after: float = 10.0

    def __post_init__(self) -> None:
        if self.initial < 0 or self.maximum < 0 or self.reset_after < 0:
            raise ValueError("backoff times must be >= 0")
        if self.factor < 1:
            raise ValueError("backoff factor must be >= 1")
        if not 0 <= self.jitter < 1:
            raise ValueError("backoff jitter must be in [0, 1)")

    def base_delay(self, failures: int) -> float:
        """The delay before jitter for ``failures`` consecutive quick exits."""
        if failures <= 0:
            return 0.0
        exponent = min(failures - 1, _MAX_EXPONENT)
        return min(self.maximum, self.initial * self.factor ** exponent)

    def delay(self, failures: int, rand: Callable[[], float] = random.random) -> float:
        """The jittered delay; ``rand`` returns a float in [0, 1) (e.g. ``random.random``)."""
        base = self.base_delay(failures)
        if base == 0.0:
            return 0.0
        spread = self.jitter * (2.0 * rand() - 1.0)
        return max(0.0, min(self.maximum, base * (1.0 + spread)))

    def is_quick_exit(self, uptime: float) -> bool:
        """True when a run of ``uptime`` seconds counts towards the crash-loop limit."""
        return uptime < self.reset_after

    def next_failures(self, failures: int, uptime: float) -> int:
        """The consecutive quick-exit count after a run of ``uptime`` seconds ended."""
        return failures + 1 if self.is_quick_exit(uptime) else 0
