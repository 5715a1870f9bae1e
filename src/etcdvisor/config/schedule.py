"""Pure schedule math for ``type: cron`` roles: which instants are ticks.

No I/O, no clock, no sleeping: every function takes the time it reasons about.

Expressions (``Schedule.parse``):

* standard 5-field cron, ``minute hour day-of-month month day-of-week``, as
  evaluated by the ``cronsim`` library (Debian cron semantics: day-of-month and
  day-of-week are OR-ed unless one starts with ``*``). cronsim's extensions are
  accepted too (``JAN``/``MON`` names, ``L``, ``LW``, ``MON#2``, ``5L``). A
  6-field expression (with seconds) is rejected;
* the aliases ``@hourly @daily @midnight @weekly @monthly @yearly @annually``;
* ``@every <duration>``: the config's one duration grammar
  (:mod:`etcdvisor.config.durations`: ``2s``, ``500ms``, ``1m30s``, ``1h``, or a
  plain number of seconds such as ``90`` or ``1.5``; no spaces inside; whole
  milliseconds; at most 366 days), and at least 1s.

This is the only schedule parser: the config loader builds the ``Schedule``
once (``RoleSpec.schedule``) and the cron runner uses that very object, so
what ``validate`` accepts is exactly what ``run`` and reload run.

Guarantees:

* A tick is an instant, returned as an aware UTC ``datetime``. Its id
  (``Schedule.tick_id``) depends only on that instant and on the schedule, so
  every member computes the same etcd key suffix without coordination. Ids of
  one schedule have a fixed width and sort in time order (years 1000-9999).
* ``@every D`` tick k is at exactly k*D after the Unix epoch (integer
  microsecond arithmetic, no floats), independent of the timezone and of when
  a member started.
* The tick set is defined by ``next_tick``; ``ticks_between`` and
  ``latest_tick`` are built on it, so the three always agree, and successive
  ticks are strictly increasing: no instant is ever produced twice.
* DST, cron only (cronsim's behaviour, pinned by tests):
  - fixed-time expressions (minute and hour fields both not starting with
    ``*``, e.g. ``30 2 * * *``, ``@daily``): on fall-back, a repeated wall time
    fires once, at its first occurrence; on spring-forward, a wall time that
    does not exist fires once at the first existing moment after it
    (``02:30`` -> ``03:00`` new offset), so a daily job is never skipped;
  - expressions with a wildcard/step in the minute or hour field (``0 * * * *``,
    ``*/15 2 * * *``, ``@hourly``) follow real time: on fall-back the repeated
    hour fires in both occurrences (two distinct instants, so one tick per
    real hour); on spring-forward the missing hour simply has no ticks (no
    real time was skipped).

Limits:

* cronsim gives up looking for a tick 50 years ahead; an expression that never
  fires from 2000-01-01 is rejected at parse time, and ``latest_tick`` looks
  back at most ~64 years (then returns None).
* ``ticks_between`` returns at most ``limit`` ticks, the earliest ones; a caller
  that gets exactly ``limit`` continues from the last tick it got.
* Timezones come from the system zoneinfo database (or the ``tzdata`` package);
  ``UTC`` is built in.
* All datetimes passed in must be aware; naive ones raise ``ValueError``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from .durations import parse_duration_ms

__all__ = [
    "Schedule",
    "ScheduleError",
    "is_missed",
    "parse_tick_id",
]

UTC = UTC
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)

_ALIASES = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}
_EVERY_PREFIX = "@every"
_MIN_PERIOD_MS = 1000
_TICK_ID_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{3})?Z")

# A fresh cronsim iterator may first yield a wall time that resolves to an
# instant at or before its start (start inside the second occurrence of a
# repeated hour); a few candidates are always enough to get past it.
_MAX_STALE_CANDIDATES = 8
_PARSE_PROBE = datetime(2000, 1, 1, tzinfo=UTC)
_LATEST_FIRST_WINDOW = timedelta(minutes=2)
_LATEST_HORIZON = timedelta(days=366 * 64)


class ScheduleError(ValueError):
    """A schedule expression or timezone is invalid; the message is one line."""


@dataclass(frozen=True)
class Schedule:
    """A parsed schedule; build it with ``Schedule.parse``.

    Value object: equal expressions in the same timezone compare equal, which
    lets a config reload tell a changed schedule from an untouched one.
    """

    expression: str
    timezone: str
    _cron: str | None = field(repr=False)
    _period_us: int | None = field(repr=False)
    _tz: tzinfo = field(repr=False, compare=False)

    # -- construction ---------------------------------------------------

    @classmethod
    def parse(cls, expr: str, timezone: str = "UTC") -> Schedule:
        """Parse ``expr`` in ``timezone``; raise ScheduleError with a reason."""
        if not isinstance(expr, str):
            raise ScheduleError(f"schedule must be a string, got {type(expr).__name__}")
        text = " ".join(expr.split())
        tz = load_timezone(timezone)
        if not text:
            raise ScheduleError("empty schedule expression")
        if not text.isascii():  # int() would read other scripts' digits in a cron field
            raise ScheduleError(f"schedule {_short(text)} contains non-ASCII characters")
        head = text.split(" ", 1)[0].lower()
        if head == _EVERY_PREFIX:
            period_ms = _every_period_ms(text[len(_EVERY_PREFIX):].strip())
            return cls(text, timezone, None, period_ms * 1000, tz)
        if head.startswith("@"):
            if text.lower() not in _ALIASES:
                known = " ".join(sorted(_ALIASES)) + " @every <duration>"
                raise ScheduleError(f"unknown schedule alias {text!r} (known: {known})")
            cron = _ALIASES[text.lower()]
        else:
            cron = text
        _check_cron(cron)
        schedule = cls(text, timezone, cron, None, tz)
        try:
            schedule.next_tick(_PARSE_PROBE)
        except ScheduleError:
            raise ScheduleError(f"cron expression {text!r} never fires") from None
        return schedule

    # -- queries ---------------------------------------------------------

    @property
    def period(self) -> timedelta | None:
        """The fixed period of an ``@every`` schedule, None for cron."""
        if self._period_us is None:
            return None
        return timedelta(microseconds=self._period_us)

    def next_tick(self, after: datetime) -> datetime:
        """The first tick strictly after ``after``, as an aware UTC datetime."""
        _require_aware(after, "after")
        if self._period_us is not None:
            k = _epoch_us(after) // self._period_us + 1
            return _from_epoch_us(k * self._period_us)
        return self._cron_next(after.astimezone(UTC))

    def ticks_between(self, start: datetime, end: datetime, limit: int = 1000) -> list[datetime]:
        """Ticks t with start < t <= end, in order, at most ``limit`` (the earliest)."""
        _require_aware(start, "start")
        _require_aware(end, "end")
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        if end <= start:
            return []
        if self._period_us is not None:
            first = _epoch_us(start) // self._period_us + 1
            last = _epoch_us(end) // self._period_us
            last = min(last, first + limit - 1)
            return [_from_epoch_us(k * self._period_us) for k in range(first, last + 1)]
        ticks: list[datetime] = []
        cursor = start.astimezone(UTC)
        while len(ticks) < limit:
            cursor = self._cron_next(cursor)
            if cursor > end:
                break
            ticks.append(cursor)
        return ticks

    def latest_tick(self, at_or_before: datetime) -> datetime | None:
        """The most recent tick <= ``at_or_before``; None if none in the horizon."""
        _require_aware(at_or_before, "at_or_before")
        if self._period_us is not None:
            k = _epoch_us(at_or_before) // self._period_us
            return _from_epoch_us(k * self._period_us)
        return self._cron_latest(at_or_before.astimezone(UTC))

    def tick_id(self, tick: datetime) -> str:
        """Stable id of a tick: ISO 8601 in UTC, e.g. ``2026-11-21T23:05:00Z``.

        Schedules whose ticks are whole seconds (every cron schedule, and
        ``@every`` in whole seconds) use second precision; other ``@every``
        schedules always carry milliseconds (``...:00.500Z``), so ids of one
        schedule share one width and sort in time order.
        """
        _require_aware(tick, "tick")
        utc = tick.astimezone(UTC)
        base = (
            f"{utc.year:04d}-{utc.month:02d}-{utc.day:02d}"
            f"T{utc.hour:02d}:{utc.minute:02d}:{utc.second:02d}"
        )
        if self._whole_seconds:
            if utc.microsecond:
                raise ValueError(f"{tick.isoformat()} is not a tick of {self.expression!r}")
            return base + "Z"
        if utc.microsecond % 1000:
            raise ValueError(f"{tick.isoformat()} is not a tick of {self.expression!r}")
        return f"{base}.{utc.microsecond // 1000:03d}Z"

    def format_tick(self, tick: datetime) -> str:
        """ISO 8601 in the schedule's timezone with its offset, for SCHEDULED_TIME.

        e.g. ``2026-11-22T00:05:00+01:00`` for Europe/Berlin; milliseconds are
        included only for sub-second ``@every`` schedules.
        """
        _require_aware(tick, "tick")
        spec = "seconds" if self._whole_seconds else "milliseconds"
        return tick.astimezone(self._tz).isoformat(timespec=spec)

    # -- internals -------------------------------------------------------

    @property
    def _whole_seconds(self) -> bool:
        return self._period_us is None or self._period_us % 1_000_000 == 0

    def _cron_next(self, after: datetime) -> datetime:
        """First cron tick strictly after the UTC instant ``after``."""
        assert self._cron is not None
        try:
            candidates = CronSim(self._cron, after.astimezone(self._tz))
            for _ in range(_MAX_STALE_CANDIDATES):
                candidate = next(candidates).astimezone(UTC)
                if candidate > after:
                    return candidate
        except (StopIteration, OverflowError):
            pass
        raise ScheduleError(f"{self.expression!r} has no tick after {after.isoformat()}")

    def _cron_latest(self, at: datetime) -> datetime | None:
        """Last cron tick <= ``at`` (UTC), found with forward steps only.

        Whenever a window (at - w, at] holds a tick, the last ``next_tick`` in
        it is the answer, so correctness needs only ``next_tick``; cronsim's
        reverse iterator merely suggests the first window, which then usually
        holds exactly that one tick. Windows grow 4x until the horizon.
        """
        window = _LATEST_FIRST_WINDOW
        hint = self._cron_reverse_hint(at)
        if hint is not None:
            window = max(at - hint, timedelta(0)) + timedelta(seconds=1)
        while window <= _LATEST_HORIZON:
            try:
                cursor = at - window
            except OverflowError:
                return None
            found = None
            while True:
                try:
                    cursor = self._cron_next(cursor)
                except ScheduleError:
                    break
                if cursor > at:
                    break
                found = cursor
            if found is not None:
                return found
            window *= 4
        return None

    def _cron_reverse_hint(self, at: datetime) -> datetime | None:
        """cronsim's guess at the last tick <= ``at``; only a search hint.

        Its reverse iteration handles DST differently from forward iteration,
        so the result is never returned to callers unverified.
        """
        assert self._cron is not None
        try:
            start = (at + timedelta(seconds=1)).astimezone(self._tz)
            return next(CronSim(self._cron, start, reverse=True)).astimezone(UTC)
        except (StopIteration, CronSimError, OverflowError, ValueError):
            return None


def is_missed(
    tick: datetime, now: datetime, starting_deadline: timedelta | float | None
) -> bool:
    """True if ``tick`` is older than ``starting_deadline`` at ``now``.

    A missed tick must not be started late. Exactly at the deadline is still
    on time; a tick in the future is never missed; ``None`` means no deadline.
    ``starting_deadline`` is a timedelta or a number of seconds, >= 0.
    """
    _require_aware(tick, "tick")
    _require_aware(now, "now")
    if starting_deadline is None:
        return False
    if not isinstance(starting_deadline, timedelta):
        starting_deadline = timedelta(seconds=starting_deadline)
    if starting_deadline < timedelta(0):
        raise ValueError(f"starting_deadline must be >= 0, got {starting_deadline}")
    return now - tick > starting_deadline


def parse_tick_id(tick_id: str) -> datetime:
    """Inverse of ``Schedule.tick_id``: the tick as an aware UTC datetime."""
    if not isinstance(tick_id, str) or not _TICK_ID_RE.fullmatch(tick_id):
        raise ValueError(f"not a tick id: {tick_id!r}")
    return datetime.fromisoformat(tick_id[:-1]).replace(tzinfo=UTC)


def load_timezone(name: str) -> tzinfo:
    """The tzinfo for an IANA zone name (``UTC`` built in); ScheduleError if unknown."""
    if name == "UTC":
        return UTC  # cronsim skips DST handling only for datetime.timezone.utc
    if not isinstance(name, str) or not name:
        raise ScheduleError(f"invalid timezone {name!r}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ScheduleError(f"unknown timezone {name!r}") from None


def _check_cron(cron: str) -> None:
    fields = cron.split()
    if len(fields) != 5:
        raise ScheduleError(
            f"cron expression {cron!r} has {len(fields)} fields, expected 5 "
            "(minute hour day-of-month month day-of-week)"
        )
    try:
        CronSim(cron, _PARSE_PROBE)
    except CronSimError as exc:
        raise ScheduleError(f"invalid cron expression {cron!r}: {exc}") from None


def _every_period_ms(text: str) -> int:
    """Milliseconds of an ``@every`` period: the config's one duration grammar
    (:func:`.durations.parse_duration_ms`), at least 1s."""
    if not text:
        raise ScheduleError("@every needs a duration, e.g. '@every 30s'")
    try:
        period_ms = parse_duration_ms(text)
    except ValueError as exc:
        raise ScheduleError(f"invalid @every duration: {exc}") from None
    if period_ms < _MIN_PERIOD_MS:
        raise ScheduleError(f"@every duration {text!r} is shorter than the 1s minimum")
    return period_ms


def _short(text: str) -> str:
    return repr(text) if len(text) <= 60 else repr(text[:57]) + "..."


def _require_aware(value: datetime, name: str) -> None:
    if not isinstance(value, datetime):
        raise TypeError(f"{name} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got naive {value.isoformat()}")


def _epoch_us(value: datetime) -> int:
    return (value - _EPOCH) // _ONE_US


def _from_epoch_us(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)
