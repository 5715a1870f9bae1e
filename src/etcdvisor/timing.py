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

Keepalives go out every ``KEEPALIVE_INTERVAL`` seconds measured from their send
times (a slow reply never delays the next send), each with its own timeout
(:func:`keepalive_timeout`). With round trips of ``r`` seconds the newest
confirmed keepalive is then at most ``KEEPALIVE_INTERVAL + SEND_ALLOWANCE + r``
old, so children keep running as long as that stays below ``stop_offset``:
:func:`tolerated_round_trip` is the longest round trip to etcd a config
survives without a spurious stop. The slack rule: every lease-bound role must
tolerate round trips longer than ``MIN_TOLERATED_RTT``; otherwise the config is
rejected at load time (:func:`slack_problem` says which ttl or stop_timeout
would work). Everything here is pure: no clocks are read, no I/O.
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
"""Keepalive intervals that must fit before SIGTERM is due (the slack rule):
one for the cadence, the rest covers ``SEND_ALLOWANCE`` + ``MIN_TOLERATED_RTT``."""
SEND_ALLOWANCE = 0.1
"""Seconds a send may start late (thread scheduling on a loaded host)."""
MIN_TOLERATED_RTT = SLACK_KEEPALIVES * KEEPALIVE_INTERVAL - KEEPALIVE_INTERVAL - SEND_ALLOWANCE
"""Every accepted config tolerates etcd round trips longer than this (0.9 s)."""

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


def start_deadline(t_k: float, ttl: float, stop_timeout: float) -> float:
    """The latest monotonic time a lease-bound child may *start* on the
    confirmation sent at ``t_k``: one keepalive interval before its stop is
    due. The confirmation is at least one round trip old, so starting by then
    means the next keepalive (sent an interval after ``t_k``) comes back before
    the stop whenever the round trip is steady; past it the link is slower than
    the config tolerates and the child would only start to be stopped again."""
    return term_deadline(t_k, ttl, stop_timeout) - KEEPALIVE_INTERVAL


def kill_deadline(t_k: float, ttl: float, stop_timeout: float) -> float:
    """Monotonic time at which a lease-bound child's process group gets SIGKILL."""
    return term_deadline(t_k, ttl, stop_timeout) + stop_timeout


def keepalive_timeout(ttl: float) -> float:
    """Timeout of one keepalive: half the TTL, within 1..5 s (several are in flight)."""
    return min(5.0, max(1.0, ttl / 2.0))


def tolerated_round_trip(ttl: float, stop_timeout: float) -> float:
    """The longest etcd round trip (seconds) under which a lease-bound child
    with ``stop_timeout`` keeps running: the newest confirmed keepalive is at
    most ``interval + allowance + rtt`` old and must stay younger than
    ``stop_offset``; a reply must also come back within its own timeout.
    May be negative (no round trip is tolerated)."""
    by_deadline = stop_offset(ttl, stop_timeout) - KEEPALIVE_INTERVAL - SEND_ALLOWANCE
    return min(by_deadline, keepalive_timeout(ttl))


def tolerance_line(ttl: float, stop_timeout: float | None) -> str:
    """One line for ``validate`` and ``run``: ``ttl 4s, stop_timeout 0.5s:
    tolerates round trips up to 1.2s`` (``stop_timeout`` None: no lease-bound
    role, only the keepalive timeout limits the round trip)."""
    if stop_timeout is None:
        return (f"ttl {format_duration(ttl)}, no lease-bound role: keepalives tolerate round trips "
                f"up to {format_duration(keepalive_timeout(ttl))}")
    rtt = tolerated_round_trip(ttl, stop_timeout)
    what = f"round trips up to {format_duration(rtt)}" if rtt > 0 else "no round trip at all"
    return f"ttl {format_duration(ttl)}, stop_timeout {format_duration(stop_timeout)}: tolerates {what}"


def config_tolerance_line(ttl: float, lease_bound_stop_timeouts: dict[str, float]) -> str:
    """:func:`tolerance_line` for the tightest of a config's lease-bound roles
    (role name -> stop_timeout), naming that role."""
    if not lease_bound_stop_timeouts:
        return tolerance_line(ttl, None)
    role, stop_timeout = max(lease_bound_stop_timeouts.items(), key=lambda item: (item[1], item[0]))
    line = tolerance_line(ttl, stop_timeout)
    return line if len(lease_bound_stop_timeouts) == 1 else f"{line} (tightest role: {role})"


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
    or stop_timeout < 4.6s; tolerates round trips up to 0.4s, needs more than
    0.9s)``. ``has_slack`` is the same rule as ``tolerated_round_trip >
    MIN_TOLERATED_RTT`` (keepalive_timeout is never below 1 s)."""
    if has_slack(ttl, stop_timeout):
        return None
    need = f"need member.ttl >= {min_ttl(stop_timeout)}s"
    bound = max_stop_timeout(ttl)
    if bound > _EPSILON:
        need += f" or stop_timeout < {format_duration(bound)}"
    rtt = tolerated_round_trip(ttl, stop_timeout)
    tolerates = f"tolerates round trips up to {format_duration(rtt)}" if rtt > 0 else "tolerates no round trip"
    return (f"{format_duration(stop_timeout)} leaves no slack under member.ttl {format_duration(ttl)} ({need}; "
            f"{tolerates}, needs more than {format_duration(MIN_TOLERATED_RTT)})")


# --- durations in words: the one formatter (the one parser is config/durations.py) ---------
def format_duration(seconds: float) -> str:
    """A duration for messages, in the config's grammar so it can be written back:
    ``10.0`` -> ``10s``, ``6.5`` -> ``6.5s``, ``0.25`` -> ``0.25s`` (millisecond precision)."""
    return f"{round(seconds, 3):g}s"


def format_elapsed(seconds: float) -> str:
    """A time span for tables, to the two largest units: ``42s``, ``3m12s``, ``1h5m``,
    ``2d3h`` (whole seconds; a negative span is ``0s``)."""
    rest = max(0, int(seconds))
    days, rest = divmod(rest, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes}m"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"
