"""The cron runner's catch-up arithmetic, with an injected wall clock and
the in-memory backend: a leader that resumes far behind runs at most the
newest CATCH_UP_LIMIT ticks younger than the horizon."""

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

from etcdvisor.config.schedule import Schedule
from etcdvisor.roles import cron


def runner(expr="@every 2s", starting_deadline=None):
    r = cron.CronRunner.__new__(cron.CronRunner)
    r.schedule = Schedule.parse(expr)
    r.spec = SimpleNamespace(starting_deadline=starting_deadline, name="c")
    r.missed = 0
    r.say = lambda message: None
    return r


NOW = datetime(2026, 11, 22, 12, 0, 0, tzinfo=UTC)


def test_a_few_missed_ticks_all_run_late():
    r = runner()
    r.cursor = NOW - timedelta(seconds=7)
    due = r._due_ticks(NOW)
    assert due == [NOW - timedelta(seconds=s) for s in (6, 4, 2, 0)] and r.missed == 0


def test_far_behind_runs_only_the_newest_limit_within_the_horizon():
    r = runner()
    r.cursor = NOW - timedelta(days=2)
    due = r._due_ticks(NOW)
    assert len(due) == cron.CATCH_UP_LIMIT and due[-1] == NOW
    assert due[0] == NOW - timedelta(seconds=2 * (cron.CATCH_UP_LIMIT - 1))
    assert r.missed >= cron.CATCH_UP_HORIZON / 2 - cron.CATCH_UP_LIMIT


def test_ticks_past_the_starting_deadline_are_returned_for_a_missed_record():
    r = runner(starting_deadline=5.0)
    r.cursor = NOW - timedelta(seconds=30)
    due = r._due_ticks(NOW)
    assert due[0] == NOW - timedelta(seconds=28) and due[-1] == NOW and r.missed == 0
    late = [t for t in due if cron.is_missed(t, NOW, 5.0)]
    assert late and all(t < NOW - timedelta(seconds=5) for t in late)


def test_a_starting_deadline_longer_than_the_horizon_widens_it():
    r = runner("0 * * * *", starting_deadline=3 * 3600)
    r.cursor = NOW - timedelta(hours=5)
    due = r._due_ticks(NOW)
    assert due[0] == NOW - timedelta(hours=3) and due[-1] == NOW
