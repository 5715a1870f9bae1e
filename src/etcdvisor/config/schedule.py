"""Parse a cron role's ``schedule`` into a :class:`Schedule` (no clock is read).

Accepted: a 5-field cron expression as ``cronsim.CronSim`` understands it
(ranges, steps, lists, month and weekday names, ``L``, ``#``), the aliases
``@yearly @annually @monthly @weekly @daily @midnight @hourly`` (expanded to
5 fields here, since cronsim does not know them), and ``@every <duration>``
with a duration of at least one second. 6-field (seconds) expressions are
refused: the cluster schedules to the minute.
"""

from __future__ import annotations

from datetime import datetime, timezone

from cronsim import CronSim, CronSimError

from .durations import parse_duration
from .model import Schedule

CRON_ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
MIN_EVERY = 1.0
_PROBE_TIME = datetime(2000, 1, 1, tzinfo=timezone.utc)  # any fixed instant will do


def parse_schedule(text: str) -> Schedule:
    """Return the schedule, or raise ``ValueError`` with a one-line reason."""
    stripped = " ".join(text.split())
    lowered = stripped.lower()
    if lowered.startswith("@every"):
        return Schedule(text=text, every=_parse_every(stripped[len("@every"):].strip()))
    if lowered.startswith("@"):
        if lowered not in CRON_ALIASES:
            names = ", ".join(CRON_ALIASES) + ", @every <duration>"
            raise ValueError(f"unknown schedule {text!r} (known: {names})")
        return Schedule(text=text, cron=CRON_ALIASES[lowered])
    fields = stripped.split(" ")
    if len(fields) != 5:
        raise ValueError(
            f"{text!r} has {len(fields)} fields; expected 5 (minute hour day-of-month month day-of-week)"
        )
    try:
        next(iter(CronSim(stripped, _PROBE_TIME)))
    except (CronSimError, ValueError, StopIteration) as exc:
        reason = str(exc) or type(exc).__name__
        raise ValueError(f"{text!r} is not a valid cron schedule: {reason}") from None
    return Schedule(text=text, cron=stripped)


def _parse_every(interval: str) -> float:
    if not interval:
        raise ValueError("'@every' needs a duration, e.g. '@every 30s'")
    seconds = parse_duration(interval)
    if seconds < MIN_EVERY:
        raise ValueError(f"'@every {interval}' is too frequent (at least {MIN_EVERY:g}s)")
    return seconds
