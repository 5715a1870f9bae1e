"""Pure backoff math: growth, cap, jitter bounds, reset after a good run."""

import pytest

from etcdvisor.process.backoff import RestartBackoff


def test_delay_doubles_from_initial_and_is_capped():
    backoff = RestartBackoff(initial=0.5, maximum=5.0, jitter=0.0)
    assert [backoff.delay(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]


def test_no_failures_means_no_delay():
    assert RestartBackoff().delay(0, rand=lambda: 0.99) == 0.0


def test_jitter_stays_within_twenty_percent_and_below_the_cap():
    backoff = RestartBackoff(initial=1.0, maximum=10.0, jitter=0.2)
    assert backoff.delay(2, rand=lambda: 0.0) == pytest.approx(1.6)
    assert backoff.delay(2, rand=lambda: 0.5) == pytest.approx(2.0)
    assert backoff.delay(2, rand=lambda: 0.999999) == pytest.approx(2.4, abs=1e-5)
    assert backoff.delay(20, rand=lambda: 0.999999) == 10.0  # cap applied after jitter


def test_huge_failure_counts_do_not_overflow():
    assert RestartBackoff(initial=1.0, maximum=30.0, jitter=0.0).delay(10_000) == 30.0


def test_quick_exits_count_and_a_long_run_resets():
    backoff = RestartBackoff(reset_after=10.0)
    failures = 0
    for _ in range(3):
        failures = backoff.next_failures(failures, uptime=0.5)
    assert failures == 3
    assert backoff.next_failures(failures, uptime=10.0) == 0
    assert backoff.delay(backoff.next_failures(failures, uptime=60.0)) == 0.0


@pytest.mark.parametrize("kwargs", [{"initial": -1}, {"factor": 0.5}, {"jitter": 1.0}])
def test_invalid_settings_are_rejected(kwargs):
    with pytest.raises(ValueError):
        RestartBackoff(**kwargs)
