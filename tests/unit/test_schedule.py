"""Schedule math for cron roles: parsing, tick sets, DST, ids, deadlines.

DST dates used (2026):
  Europe/Berlin     spring 03-29 02:00 CET -> 03:00 CEST (01:00Z),
                    fall   10-25 03:00 CEST -> 02:00 CET (01:00Z)
  America/New_York  spring 03-08 02:00 EST -> 03:00 EDT (07:00Z),
                    fall   11-01 02:00 EDT -> 01:00 EST (06:00Z)
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from etcdvisor.config.schedule import Schedule, ScheduleError, is_missed, parse_tick_id

UTC = UTC
BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def local_day_bounds(day: datetime, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """(start, end] covering one local calendar day, as UTC instants."""
    start = datetime(day.year, day.month, day.day, tzinfo=tz).astimezone(UTC)
    nxt = day + timedelta(days=1)
    end = datetime(nxt.year, nxt.month, nxt.day, tzinfo=tz).astimezone(UTC)
    return start - timedelta(microseconds=1), end - timedelta(microseconds=1)


def local_strings(schedule: Schedule, ticks: list[datetime]) -> list[str]:
    return [schedule.format_tick(t) for t in ticks]


# -- an independent brute-force cron matcher (minute resolution) ------------


def _field_values(spec: str, low: int, high: int) -> set[int]:
    values: set[int] = set()
    for term in spec.split(","):
        base, _, step = term.partition("/")
        if base == "*":
            first, last = low, high
        elif "-" in base:
            first, last = (int(x) for x in base.split("-"))
        else:
            first = int(base)
            last = high if step else first
        values.update(range(first, last + 1, int(step) if step else 1))
    return values


def brute_matcher(expr: str):
    """A predicate: does a local wall time match ``expr`` (Debian DOM/DOW OR rule)?"""
    minute, hour, dom, month, dow = expr.split()
    minutes, hours = _field_values(minute, 0, 59), _field_values(hour, 0, 23)
    doms, months = _field_values(dom, 1, 31), _field_values(month, 1, 12)
    dows = {d % 7 for d in _field_values(dow, 0, 7)}
    either_day = not (dom.startswith("*") or dow.startswith("*"))

    def matches(wall: datetime) -> bool:
        dom_ok = wall.day in doms
        dow_ok = (wall.isoweekday() % 7) in dows
        day_ok = (dom_ok or dow_ok) if either_day else (dom_ok and dow_ok)
        return wall.minute in minutes and wall.hour in hours and wall.month in months and day_ok

    return matches


def brute_ticks(expr: str, tz, start: datetime, end: datetime) -> list[datetime]:
    """Every real UTC minute in (start, end] whose local wall time matches."""
    matches = brute_matcher(expr)
    cursor = start.replace(second=0, microsecond=0) + timedelta(minutes=1)
    found = []
    while cursor <= end:
        if matches(cursor.astimezone(tz)):
            found.append(cursor)
        cursor += timedelta(minutes=1)
    return found


# -- aliases, fields, ranges, steps ------------------------------------------

REF = utc(2026, 3, 10, 10, 17, 42)  # a Tuesday


@pytest.mark.parametrize(
    "alias, expected_next, equivalent",
    [
        ("@hourly", utc(2026, 3, 10, 11, 0), "0 * * * *"),
        ("@daily", utc(2026, 3, 11, 0, 0), "0 0 * * *"),
        ("@midnight", utc(2026, 3, 11, 0, 0), "0 0 * * *"),
        ("@weekly", utc(2026, 3, 15, 0, 0), "0 0 * * 0"),
        ("@monthly", utc(2026, 4, 1, 0, 0), "0 0 1 * *"),
        ("@yearly", utc(2027, 1, 1, 0, 0), "0 0 1 1 *"),
        ("@annually", utc(2027, 1, 1, 0, 0), "0 0 1 1 *"),
    ],
)
def test_every_alias(alias: str, expected_next: datetime, equivalent: str) -> None:
    schedule = Schedule.parse(alias)
    assert schedule.next_tick(REF) == expected_next
    span_end = REF + timedelta(days=800)
    assert schedule.ticks_between(REF, span_end) == Schedule.parse(equivalent).ticks_between(
        REF, span_end
    )
    assert Schedule.parse(alias.upper()).next_tick(REF) == expected_next


def test_alias_in_timezone_is_local_midnight() -> None:
    schedule = Schedule.parse("@daily", "Europe/Berlin")
    assert schedule.next_tick(REF) == utc(2026, 3, 10, 23, 0)  # 00:00+01:00
    assert schedule.format_tick(schedule.next_tick(REF)) == "2026-03-11T00:00:00+01:00"


@pytest.mark.parametrize(
    "expr, start, expected",
    [
        ("*/15 * * * *", utc(2026, 3, 10, 10, 17), [(10, 30), (10, 45), (11, 0), (11, 15)]),
        ("0 9-17/4 * * *", utc(2026, 3, 10, 0, 0), [(9, 0), (13, 0), (17, 0)]),
        ("5,35 8 * * *", utc(2026, 3, 10, 0, 0), [(8, 5), (8, 35)]),
        ("10-12 23 * * *", utc(2026, 3, 10, 0, 0), [(23, 10), (23, 11), (23, 12)]),
    ],
)
def test_ranges_and_steps_within_a_day(expr, start, expected) -> None:
    schedule = Schedule.parse(expr)
    ticks = schedule.ticks_between(start, start.replace(hour=23, minute=59))
    assert [(t.hour, t.minute) for t in ticks][: len(expected)] == expected


def test_weekday_range_and_names() -> None:
    weekdays = Schedule.parse("0 8 * * 1-5")
    named = Schedule.parse("0 8 * * MON-FRI")
    week = (utc(2026, 3, 8), utc(2026, 3, 15))  # Sunday to Sunday
    ticks = weekdays.ticks_between(*week)
    assert [t.day for t in ticks] == [9, 10, 11, 12, 13]
    assert named.ticks_between(*week) == ticks


def test_day_of_month_or_day_of_week_like_debian_cron() -> None:
    # Both restricted: fires on the 13th OR on Fridays.
    schedule = Schedule.parse("0 12 13 * 5")
    ticks = schedule.ticks_between(utc(2026, 3, 1), utc(2026, 3, 31))
    assert [t.day for t in ticks] == [6, 13, 20, 27]
    ticks = schedule.ticks_between(utc(2026, 4, 1), utc(2026, 4, 30))
    assert [t.day for t in ticks] == [3, 10, 13, 17, 24]


def test_cronsim_extensions_are_accepted() -> None:
    last_day = Schedule.parse("0 0 L * *")
    assert last_day.next_tick(utc(2026, 2, 2)) == utc(2026, 2, 28)
    second_monday = Schedule.parse("0 0 * * MON#2")
    assert second_monday.next_tick(utc(2026, 3, 1)) == utc(2026, 3, 9)


def test_leap_day_schedule_and_its_latest_tick() -> None:
    schedule = Schedule.parse("0 0 29 2 *")
    assert schedule.next_tick(utc(2026, 6, 1)) == utc(2028, 2, 29)
    assert schedule.latest_tick(utc(2026, 6, 1)) == utc(2024, 2, 29)


# -- @every ------------------------------------------------------------------


def test_every_is_aligned_to_the_epoch_whoever_computes_it() -> None:
    schedule = Schedule.parse("@every 7s")
    epoch = utc(1970, 1, 1)
    for member_now in (utc(2026, 3, 10, 10, 17, 42), utc(2026, 3, 10, 10, 17, 43, 999999)):
        tick = schedule.next_tick(member_now)
        assert (tick - epoch) % timedelta(seconds=7) == timedelta(0)
        assert member_now < tick <= member_now + timedelta(seconds=7)
    # Two members starting at different moments agree on the shared ticks.
    a = schedule.ticks_between(utc(2026, 1, 1, 0, 0, 0), utc(2026, 1, 1, 0, 1))
    b = schedule.ticks_between(utc(2026, 1, 1, 0, 0, 13, 5), utc(2026, 1, 1, 0, 1))
    assert b == [t for t in a if t > utc(2026, 1, 1, 0, 0, 13, 5)]
    assert all(later - earlier == timedelta(seconds=7) for earlier, later in zip(a, a[1:]))


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("@every 2s", 2),
        ("@every 1m30s", 90),
        ("@every 90", 90),
        ("@every 1.5", 1.5),
        ("@every 1h", 3600),
        ("@every 1s500ms", 1.5),
        ("@every 1500ms", 1.5),
        ("@every 1h1m1s", 3661),
        ("@EVERY   30s", 30),
        ("@every 1s", 1),
    ],
)
def test_every_duration_forms(text: str, seconds: float) -> None:
    assert Schedule.parse(text).period == timedelta(seconds=seconds)


def test_every_hour_fires_on_the_utc_hour_in_any_timezone() -> None:
    in_utc = Schedule.parse("@every 1h")
    in_kathmandu = Schedule.parse("@every 1h", "Asia/Kathmandu")  # UTC+05:45
    assert in_utc.next_tick(REF) == in_kathmandu.next_tick(REF) == utc(2026, 3, 10, 11)
    assert in_kathmandu.format_tick(utc(2026, 3, 10, 11)) == "2026-03-10T16:45:00+05:45"


def test_every_tick_at_exact_boundary_is_not_next_but_is_latest() -> None:
    schedule = Schedule.parse("@every 1m")
    on_tick = utc(2026, 3, 10, 10, 17)
    assert schedule.next_tick(on_tick) == utc(2026, 3, 10, 10, 18)
    assert schedule.latest_tick(on_tick) == on_tick
    assert schedule.latest_tick(on_tick - timedelta(microseconds=1)) == utc(2026, 3, 10, 10, 16)


def test_every_before_the_epoch_still_aligned() -> None:
    schedule = Schedule.parse("@every 7s")
    tick = schedule.latest_tick(utc(1969, 12, 31, 23, 59, 59))
    assert tick == utc(1970, 1, 1) - timedelta(seconds=7)


def test_every_ticks_between_is_capped_and_resumable() -> None:
    schedule = Schedule.parse("@every 1s")
    start, end = utc(2026, 1, 1), utc(2026, 1, 2)
    first = schedule.ticks_between(start, end, limit=5)
    assert first == [start + timedelta(seconds=s) for s in range(1, 6)]
    second = schedule.ticks_between(first[-1], end, limit=5)
    assert second[0] == start + timedelta(seconds=6)
    assert len(schedule.ticks_between(start, end, limit=1000)) == 1000
    assert len(schedule.ticks_between(start, start + timedelta(minutes=1))) == 60


# -- interval semantics and limits -------------------------------------------


def test_ticks_between_is_open_at_start_closed_at_end() -> None:
    schedule = Schedule.parse("0 * * * *")
    ticks = schedule.ticks_between(utc(2026, 1, 1, 1), utc(2026, 1, 1, 3))
    assert ticks == [utc(2026, 1, 1, 2), utc(2026, 1, 1, 3)]
    assert schedule.ticks_between(utc(2026, 1, 1, 3), utc(2026, 1, 1, 1)) == []
    assert schedule.ticks_between(utc(2026, 1, 1, 3), utc(2026, 1, 1, 3)) == []


def test_cron_ticks_between_is_capped_and_resumable() -> None:
    schedule = Schedule.parse("* * * * *")
    start, end = utc(2026, 1, 1), utc(2026, 1, 10)
    page = schedule.ticks_between(start, end, limit=3)
    assert page == [utc(2026, 1, 1, 0, m) for m in (1, 2, 3)]
    assert schedule.ticks_between(page[-1], end, limit=2) == [utc(2026, 1, 1, 0, 4), utc(2026, 1, 1, 0, 5)]
    with pytest.raises(ValueError):
        schedule.ticks_between(start, end, limit=0)


def test_next_tick_is_strictly_after_even_with_microseconds() -> None:
    schedule = Schedule.parse("* * * * *")
    assert schedule.next_tick(utc(2026, 1, 1, 0, 5)) == utc(2026, 1, 1, 0, 6)
    assert schedule.next_tick(utc(2026, 1, 1, 0, 5) - timedelta(microseconds=1)) == utc(
        2026, 1, 1, 0, 5
    )
    assert schedule.next_tick(utc(2026, 1, 1, 0, 5, 0, 1)) == utc(2026, 1, 1, 0, 6)


def test_results_are_aware_utc_and_accept_any_aware_input() -> None:
    schedule = Schedule.parse("0 * * * *", "Europe/Berlin")
    berlin_now = datetime(2026, 3, 10, 11, 17, tzinfo=BERLIN)  # 10:17Z
    tick = schedule.next_tick(berlin_now)
    assert tick.tzinfo is UTC and tick == utc(2026, 3, 10, 11)
    assert schedule.latest_tick(berlin_now).tzinfo is UTC


@pytest.mark.parametrize("method", ["next_tick", "latest_tick"])
def test_naive_datetimes_are_rejected(method: str) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        getattr(Schedule.parse("@hourly"), method)(datetime(2026, 1, 1))


def test_schedules_are_value_objects() -> None:
    assert Schedule.parse("0  5 * * *", "Europe/Berlin") == Schedule.parse("0 5 * * *", "Europe/Berlin")
    assert Schedule.parse("0 5 * * *", "Europe/Berlin") != Schedule.parse("0 5 * * *")
    assert len({Schedule.parse("@every 2s"), Schedule.parse("@every 2s")}) == 1


# -- tick ids and SCHEDULED_TIME -----------------------------------------------


def test_tick_id_is_utc_iso_and_identical_across_instances() -> None:
    tick = utc(2026, 11, 21, 23, 5)
    for tz in ("UTC", "Europe/Berlin", "America/New_York"):
        schedule = Schedule.parse("5 * * * *", tz)
        assert schedule.tick_id(schedule.next_tick(utc(2026, 11, 21, 23, 0))) == "2026-11-21T23:05:00Z"
    same_tick_other_zone = tick.astimezone(NEW_YORK)
    assert Schedule.parse("5 * * * *").tick_id(same_tick_other_zone) == "2026-11-21T23:05:00Z"
    assert parse_tick_id("2026-11-21T23:05:00Z") == tick


def test_tick_ids_across_fall_back_are_distinct_and_sorted() -> None:
    schedule = Schedule.parse("0 * * * *", "Europe/Berlin")
    ticks = schedule.ticks_between(utc(2026, 10, 24, 22), utc(2026, 10, 25, 4))
    ids = [schedule.tick_id(t) for t in ticks]
    assert ids == sorted(set(ids)) and len(ids) == 6
    assert [parse_tick_id(i) for i in ids] == ticks


def test_sub_second_every_ids_have_fixed_width_and_sort_in_time_order() -> None:
    schedule = Schedule.parse("@every 1500ms")
    ticks = schedule.ticks_between(utc(2026, 1, 1), utc(2026, 1, 1, 0, 0, 6))
    ids = [schedule.tick_id(t) for t in ticks]
    assert ids[:2] == ["2026-01-01T00:00:01.500Z", "2026-01-01T00:00:03.000Z"]
    assert ids == sorted(ids) and len({len(i) for i in ids}) == 1
    assert [parse_tick_id(i) for i in ids] == ticks
    assert schedule.format_tick(ticks[0]) == "2026-01-01T00:00:01.500+00:00"


def test_tick_id_rejects_instants_that_cannot_be_ticks() -> None:
    with pytest.raises(ValueError):
        Schedule.parse("@hourly").tick_id(utc(2026, 1, 1, 0, 0, 0, 500))
    with pytest.raises(ValueError):
        parse_tick_id("2026-11-21 23:05:00")


@pytest.mark.parametrize(
    "tz, tick, expected",
    [
        ("UTC", utc(2026, 7, 1, 12), "2026-07-01T12:00:00+00:00"),
        ("Europe/Berlin", utc(2026, 7, 1, 12), "2026-07-01T14:00:00+02:00"),
        ("Europe/Berlin", utc(2026, 1, 1, 12), "2026-01-01T13:00:00+01:00"),
        ("America/New_York", utc(2026, 1, 1, 12), "2026-01-01T07:00:00-05:00"),
        ("Europe/Berlin", utc(2026, 10, 25, 1), "2026-10-25T02:00:00+01:00"),
    ],
)
def test_format_tick_uses_the_role_timezone_offset(tz, tick, expected) -> None:
    assert Schedule.parse("0 * * * *", tz).format_tick(tick) == expected


# -- DST -----------------------------------------------------------------------


def test_hourly_berlin_fall_back_fires_each_real_hour_once() -> None:
    schedule = Schedule.parse("0 * * * *", "Europe/Berlin")
    day = local_day_bounds(datetime(2026, 10, 25), BERLIN)
    ticks = schedule.ticks_between(*day)
    assert len(ticks) == 25  # the 25-hour day
    assert local_strings(schedule, ticks)[1:5] == [
        "2026-10-25T01:00:00+02:00",
        "2026-10-25T02:00:00+02:00",
        "2026-10-25T02:00:00+01:00",  # wall 02:00 again, one real hour later
        "2026-10-25T03:00:00+01:00",
    ]
    assert all(b - a == timedelta(hours=1) for a, b in zip(ticks, ticks[1:]))


def test_hourly_berlin_spring_forward_has_no_local_two_oclock() -> None:
    schedule = Schedule.parse("0 * * * *", "Europe/Berlin")
    ticks = schedule.ticks_between(*local_day_bounds(datetime(2026, 3, 29), BERLIN))
    assert len(ticks) == 23
    assert local_strings(schedule, ticks)[1:3] == [
        "2026-03-29T01:00:00+01:00",
        "2026-03-29T03:00:00+02:00",
    ]
    assert all(b - a == timedelta(hours=1) for a, b in zip(ticks, ticks[1:]))


def test_daily_0230_berlin_fall_back_fires_once_at_first_occurrence() -> None:
    schedule = Schedule.parse("30 2 * * *", "Europe/Berlin")
    ticks = schedule.ticks_between(utc(2026, 10, 23, 12), utc(2026, 10, 27, 12))
    assert local_strings(schedule, ticks) == [
        "2026-10-24T02:30:00+02:00",
        "2026-10-25T02:30:00+02:00",  # not again at 02:30+01:00
        "2026-10-26T02:30:00+01:00",
        "2026-10-27T02:30:00+01:00",
    ]
    # From inside the repeated hour (02:15+01:00) the next tick is tomorrow's,
    # and the latest one is still the first occurrence.
    second_pass = utc(2026, 10, 25, 1, 15)
    assert schedule.next_tick(second_pass) == utc(2026, 10, 26, 1, 30)
    assert schedule.latest_tick(second_pass) == utc(2026, 10, 25, 0, 30)
    assert schedule.ticks_between(second_pass, utc(2026, 10, 25, 22)) == []


def test_daily_0230_berlin_spring_forward_fires_at_three() -> None:
    schedule = Schedule.parse("30 2 * * *", "Europe/Berlin")
    ticks = schedule.ticks_between(utc(2026, 3, 27, 12), utc(2026, 3, 31, 12))
    assert local_strings(schedule, ticks) == [
        "2026-03-28T02:30:00+01:00",
        "2026-03-29T03:00:00+02:00",  # 02:30 does not exist: next existing moment
        "2026-03-30T02:30:00+02:00",
        "2026-03-31T02:30:00+02:00",
    ]


def test_hourly_new_york_both_changes() -> None:
    schedule = Schedule.parse("0 * * * *", "America/New_York")
    fall = schedule.ticks_between(*local_day_bounds(datetime(2026, 11, 1), NEW_YORK))
    spring = schedule.ticks_between(*local_day_bounds(datetime(2026, 3, 8), NEW_YORK))
    assert len(fall) == 25 and len(spring) == 23
    assert local_strings(schedule, fall)[1:4] == [
        "2026-11-01T01:00:00-04:00",
        "2026-11-01T01:00:00-05:00",
        "2026-11-01T02:00:00-05:00",
    ]
    assert local_strings(schedule, spring)[1:3] == [
        "2026-03-08T01:00:00-05:00",
        "2026-03-08T03:00:00-04:00",
    ]


def test_daily_0230_new_york_both_changes() -> None:
    schedule = Schedule.parse("30 2 * * *", "America/New_York")
    spring = schedule.ticks_between(utc(2026, 3, 7, 12), utc(2026, 3, 9, 12))
    assert local_strings(schedule, spring) == [
        "2026-03-08T03:00:00-04:00",  # 02:30 does not exist
        "2026-03-09T02:30:00-04:00",
    ]
    fall = schedule.ticks_between(utc(2026, 10, 31, 12), utc(2026, 11, 2, 12))
    assert local_strings(schedule, fall) == [
        "2026-11-01T02:30:00-05:00",  # 02:30 is not ambiguous in New York
        "2026-11-02T02:30:00-05:00",
    ]


def test_daily_0130_new_york_fall_back_fires_once() -> None:
    schedule = Schedule.parse("30 1 * * *", "America/New_York")
    ticks = schedule.ticks_between(*local_day_bounds(datetime(2026, 11, 1), NEW_YORK))
    assert local_strings(schedule, ticks) == ["2026-11-01T01:30:00-04:00"]


def test_wildcard_minutes_in_repeated_hour_fire_in_both_occurrences() -> None:
    # Documented: only fixed-time expressions are folded to one occurrence.
    schedule = Schedule.parse("*/30 2 * * *", "Europe/Berlin")
    ticks = schedule.ticks_between(*local_day_bounds(datetime(2026, 10, 25), BERLIN))
    assert local_strings(schedule, ticks) == [
        "2026-10-25T02:00:00+02:00",
        "2026-10-25T02:30:00+02:00",
        "2026-10-25T02:00:00+01:00",
        "2026-10-25T02:30:00+01:00",
    ]
    assert len({schedule.tick_id(t) for t in ticks}) == 4


DST_CASES = [
    (expr, tz, day)
    for expr in ("0 * * * *", "30 2 * * *", "*/20 1-3 * * *", "0,30 2,3 * * *", "30 1 * * *")
    for tz, days in (
        ("Europe/Berlin", (datetime(2026, 3, 29), datetime(2026, 10, 25))),
        ("America/New_York", (datetime(2026, 3, 8), datetime(2026, 11, 1))),
    )
    for day in days
]


@pytest.mark.parametrize("expr, tz, day", DST_CASES)
def test_next_and_latest_agree_with_the_tick_set_around_dst(expr, tz, day) -> None:
    """At every 5 minutes across a DST day, next/latest match the enumeration."""
    schedule = Schedule.parse(expr, tz)
    zone = ZoneInfo(tz)
    start, end = local_day_bounds(day, zone)
    start, end = start - timedelta(hours=6), end + timedelta(hours=6)
    ticks = schedule.ticks_between(start - timedelta(days=1), end + timedelta(days=1))
    assert ticks == sorted(set(ticks))
    probe = start
    while probe <= end:
        for at in (probe, probe + timedelta(seconds=30)):
            assert schedule.next_tick(at) == min(t for t in ticks if t > at), at
            assert schedule.latest_tick(at) == max(t for t in ticks if t <= at), at
        probe += timedelta(minutes=5)


@pytest.mark.parametrize("tz", ["Europe/Berlin", "America/New_York"])
@pytest.mark.parametrize("expr", ["0 * * * *", "*/20 * * * *", "15 */2 * * *"])
def test_wildcard_hour_expressions_match_brute_force_across_dst(expr, tz) -> None:
    """Wildcard-hour expressions follow real time: every real minute that matches."""
    schedule = Schedule.parse(expr, tz)
    zone = ZoneInfo(tz)
    for day in (datetime(2026, 3, 8), datetime(2026, 3, 29), datetime(2026, 10, 25), datetime(2026, 11, 1)):
        start, end = local_day_bounds(day, zone)
        assert schedule.ticks_between(start, end) == brute_ticks(expr, zone, start, end)


# -- latest_tick against brute force -----------------------------------------


@pytest.mark.parametrize(
    "expr",
    ["*/7 * * * *", "15,45 9-17 * * 1-5", "0 0 1,15 * *", "5 4 * * 0", "0 12 13 * 5", "* 3 * * *"],
)
def test_latest_tick_matches_brute_force_utc(expr: str) -> None:
    schedule = Schedule.parse(expr)
    window_start, window_end = utc(2025, 12, 1), utc(2026, 3, 31)
    brute = brute_ticks(expr, UTC, window_start, window_end)
    assert schedule.ticks_between(window_start, window_end, limit=200_000) == brute
    probes = [utc(2026, 3, 1) + timedelta(hours=7 * i, minutes=13 * i) for i in range(60)]
    probes += brute[-5:] + [t - timedelta(seconds=1) for t in brute[-5:]]
    for at in probes:
        expected = max(t for t in brute if t <= at)
        assert schedule.latest_tick(at) == expected, (expr, at)


def test_latest_tick_far_back_is_found() -> None:
    schedule = Schedule.parse("0 0 1 1 *", "Europe/Berlin")
    assert schedule.latest_tick(utc(2026, 12, 31, 22)) == utc(2025, 12, 31, 23)
    assert schedule.latest_tick(utc(2025, 12, 31, 23)) == utc(2025, 12, 31, 23)


# -- invalid input -------------------------------------------------------------


@pytest.mark.parametrize(
    "expr, reason",
    [
        ("0 0 * * * *", "6 fields"),
        ("0 * * *", "4 fields"),
        ("", "empty"),
        ("60 * * * *", "minute"),
        ("5-1 * * * *", "minute"),
        ("* 24 * * *", "hour"),
        ("* * 32 * *", "day-of-month"),
        ("* * 0 * *", "day-of-month"),
        ("* * * 13 *", "month"),
        ("* * * * 8", "day-of-week"),
        ("*/0 * * * *", "minute"),
        ("0 0 30 2 *", "day-of-month"),
        ("@fortnightly", "unknown schedule alias"),
        ("@daily 5", "unknown schedule alias"),
        ("@every 0s", "shorter than the 1s minimum"),
        ("@every 500ms", "shorter than the 1s minimum"),
        ("@every 0", "shorter than the 1s minimum"),
        ("@every banana", "invalid @every duration"),
        ("@every -5s", "invalid @every duration"),
        ("@every 5 s", "invalid @every duration"),
        ("@every 1d", "invalid @every duration"),
        ("@every", "needs a duration"),
        ("@every 1.0005s", "whole number of milliseconds"),
        ("@every 400d", "invalid @every duration"),
        ("@every 9000h", "366 days"),
    ],
)
def test_invalid_expressions_raise_one_line_reasons(expr: str, reason: str) -> None:
    with pytest.raises(ScheduleError) as caught:
        Schedule.parse(expr)
    message = str(caught.value)
    assert reason in message and "\n" not in message
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize("tz", ["Mars/Olympus_Mons", "", "../../etc/passwd", "/etc/localtime"])
def test_invalid_timezone(tz: str) -> None:
    with pytest.raises(ScheduleError, match="timezone"):
        Schedule.parse("@hourly", tz)


# -- missed ticks ----------------------------------------------------------------


def test_is_missed_boundaries() -> None:
    tick = utc(2026, 1, 1, 12)
    deadline = timedelta(seconds=30)
    assert not is_missed(tick, tick, deadline)
    assert not is_missed(tick, tick + deadline, deadline)  # exactly at the deadline: on time
    assert is_missed(tick, tick + deadline + timedelta(microseconds=1), deadline)
    assert not is_missed(tick, tick - timedelta(hours=1), deadline)  # future tick
    assert is_missed(tick, tick + timedelta(seconds=31), 30)  # seconds as a number
    assert not is_missed(tick, tick + timedelta(days=365), None)  # no deadline
    assert is_missed(tick, tick + timedelta(microseconds=1), 0)
    with pytest.raises(ValueError):
        is_missed(tick, tick, -1)
    with pytest.raises(ValueError):
        is_missed(datetime(2026, 1, 1), tick, deadline)
