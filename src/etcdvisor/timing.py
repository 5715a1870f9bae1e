"""The lease safety rule as pure arithmetic (docs/safety.md, rule 1).

Let ``t_k`` be the monotonic time at which the last keepalive that came back
alive (TTL > 0) was *sent*, and ``ttl`` the granted TTL. The server cannot expire
the lease before ``t_k + ttl`` by its own clock; our clock may run up to ``RHO``
faster or slower, so by our clock the lease is safe until
``t_k + ttl * (1 - RHO)``. A child whose right to run depends on the lease must be
gone by then, with ``MARGIN`` to spare:

* SIGTERM at ``term_deadline = t_k + stop_offset(ttl, stop_timeout)`` where
  ``stop_offset = ttl*(1-RHO) - MARGIN - stop_timeout - KILL_BOUND``;
* SIGKILL at ``kill_deadline = term_deadline + stop_timeout``; ``KILL_BOUND`` is the
  time allowed for the kill to take effect.

Keepalives go out every ``KEEPALIVE_INTERVAL`` seconds, so in normal operation
``t_k`` is never older than about one interval. A configuration must leave room
for at least two keepalive intervals before SIGTERM is due (``slack > 0``);
otherwise a single slow keepalive would stop children, and the config is rejected
at load time. Everything here is pure: no clocks are read, no I/O.
"""

from __future__ import annotations

import math

KEEPALIVE_INTERVAL = 1.0
"""Seconds between keepalive requests."""
RHO = 0.05
"""Clock-rate uncertainty between this host and the etcd server (5%)."""
MARGIN = 0.5
"""Seconds kept free between the child being gone and the earliest lease expiry."""
KILL_BOUND = 0.5
"""Seconds allowed for SIGKILL of a process group to take effect."""
SLACK_KEEPALIVES = 2
"""Keepalive intervals that must fit before SIGTERM is due (the slack rule)."""

_EPSILON = 1e-9  # float noise: a slack this close to zero counts as none


def safe_lease_window(ttl: float) -> float:
    """Seconds after ``t_k`` during which the lease is surely alive by our clock."""
    return ttl * (1.0 - RHO)


def stop_offset(ttl: float, stop_timeout: float) -> float:
    """Seconds after ``t_k`` at which SIGTERM is due (may be negative: no slack)."""
    return safe_lease_window(ttl) - MARGIN - stop_timeout - KILL_BOUND


def term_deadline(t_k: float, ttl: float, stop_timeout: float) -> float:
    """Monotonic time at which a lease-bound child gets its stop signal."""
    return t_k + stop_offset(ttl, stop_timeout)


def kill_deadline(t_k: float, ttl: float, stop_timeout: float) -> float:
    """Monotonic time at which a lease-bound child's process group gets SIGKILL."""
    return term_deadline(t_k, ttl, stop_timeout) + stop_timeout


def slack(ttl: float, stop_timeout: float) -> float:
    """``stop_offset - 2 * KEEPALIVE_INTERVAL``: must be > 0 for lease-bound roles."""
    return stop_offset(ttl, stop_timeout) - SLACK_KEEPALIVES * KEEPALIVE_INTERVAL


def has_slack(ttl: float, stop_timeout: float) -> bool:
    """True if the timings leave positive slack (beyond float noise)."""
    return slack(ttl, stop_timeout) > _EPSILON


def max_stop_timeout(ttl: float) -> float:
    """The exclusive upper bound on ``stop_timeout`` for ``ttl`` (may be <= 0)."""
    return safe_lease_window(ttl) - MARGIN - KILL_BOUND - SLACK_KEEPALIVES * KEEPALIVE_INTERVAL


def min_ttl(stop_timeout: float) -> int:
    """The smallest whole-second TTL (>= 2) that leaves slack for ``stop_timeout``."""
    needed = (MARGIN + KILL_BOUND + SLACK_KEEPALIVES * KEEPALIVE_INTERVAL + stop_timeout) / (1.0 - RHO)
    ttl = max(2, math.floor(needed))
    while not has_slack(ttl, stop_timeout):
        ttl += 1
    return ttl


def slack_problem(ttl: float, stop_timeout: float) -> str | None:
    """None if the timings are safe, else a one-line reason stating the numbers.

    Example: ``10s leaves no slack under member.ttl 8s (need member.ttl >= 9s
    or stop_timeout < 4.6s)``."""
    if has_slack(ttl, stop_timeout):
        return None
    need = f"need member.ttl >= {min_ttl(stop_timeout)}s"
    bound = max_stop_timeout(ttl)
    if bound > _EPSILON:
        need += f" or stop_timeout < {_seconds(bound)}"
    return f"{_seconds(stop_timeout)} leaves no slack under member.ttl {_seconds(ttl)} ({need})"


def _seconds(value: float) -> str:
    return f"{round(value, 3):g}s"
