"""The lease safety arithmetic of docs/safety.md, rule 1."""

from __future__ import annotations

import pytest

from etcdvisor import timing


def test_constants():
    assert (timing.KEEPALIVE_INTERVAL, timing.RHO, timing.MARGIN, timing.KILL_BOUND) == (1.0, 0.05, 0.5, 0.5)


def test_stop_offset_formula():
    # 10 * 0.95 - 0.5 - 5 - 0.5
    assert timing.stop_offset(10, 5) == pytest.approx(3.5)
    assert timing.stop_offset(20, 1) == pytest.approx(17.0)


def test_deadlines_are_relative_to_the_keepalive_send_time():
    assert timing.term_deadline(100.0, 10, 5) == pytest.approx(103.5)
    assert timing.kill_deadline(100.0, 10, 5) == pytest.approx(108.5)


def test_child_is_gone_margin_before_the_earliest_possible_expiry():
    for ttl, stop_timeout in [(10, 5), (30, 20), (9, 0.5)]:
        killed_by = timing.kill_deadline(0.0, ttl, stop_timeout) + timing.KILL_BOUND
        earliest_expiry_by_our_clock = ttl * (1 - timing.RHO)
        assert earliest_expiry_by_our_clock - killed_by == pytest.approx(timing.MARGIN)


def test_slack():
    assert timing.slack(10, 5) == pytest.approx(1.5)
    assert timing.has_slack(10, 5)
    assert timing.slack(10, 10) == pytest.approx(-3.5)
    assert not timing.has_slack(10, 10)


def test_exact_boundary_has_no_slack():
    bound = timing.max_stop_timeout(10)
    assert bound == pytest.approx(6.5)
    assert not timing.has_slack(10, bound)
    assert timing.has_slack(10, bound - 0.01)


@pytest.mark.parametrize("stop_timeout", [0.1, 1, 4.5, 5, 6.5, 10, 60])
def test_min_ttl_is_the_smallest_whole_ttl_with_slack(stop_timeout):
    ttl = timing.min_ttl(stop_timeout)
    assert timing.has_slack(ttl, stop_timeout)
    assert ttl == 2 or not timing.has_slack(ttl - 1, stop_timeout)


def test_min_ttl_examples():
    assert timing.min_ttl(10) == 14  # 13 / 0.95 = 13.68
    assert timing.min_ttl(5) == 9    # 8 / 0.95 = 8.42


def test_slack_problem_states_the_numbers():
    assert timing.slack_problem(10, 5) is None
    assert timing.slack_problem(10, 10) == (
        "10s leaves no slack under member.ttl 10s (need member.ttl >= 14s or stop_timeout < 6.5s; "
        "tolerates no round trip, needs more than 0.9s)")


def test_slack_problem_when_no_stop_timeout_fits():
    # 3 * 0.95 - 3 < 0: no stop_timeout can work, only a larger TTL
    assert timing.slack_problem(3, 0.5) == (
        "0.5s leaves no slack under member.ttl 3s (need member.ttl >= 4s; "
        "tolerates round trips up to 0.25s, needs more than 0.9s)")


def test_tolerated_round_trip_at_ttl_4():
    # stop_offset 2.3 s - one interval - 0.1 s send allowance
    assert timing.tolerated_round_trip(4, 0.5) == pytest.approx(1.2)
    assert timing.tolerance_line(4, 0.5) == "ttl 4s, stop_timeout 0.5s: tolerates round trips up to 1.2s"


def test_tolerated_round_trip_is_capped_by_the_keepalive_timeout():
    assert timing.keepalive_timeout(4) == 2.0
    assert timing.keepalive_timeout(60) == 5.0
    assert timing.tolerated_round_trip(60, 1) == 5.0


@pytest.mark.parametrize("ttl", range(2, 40))
@pytest.mark.parametrize("stop_timeout", [0, 0.1, 0.5, 0.79, 0.8, 0.81, 1, 2.5, 5, 10, 30])
def test_slack_rule_is_the_round_trip_rule(ttl, stop_timeout):
    """Accepted exactly when the config tolerates more than MIN_TOLERATED_RTT."""
    tolerated = timing.tolerated_round_trip(ttl, stop_timeout)
    assert timing.has_slack(ttl, stop_timeout) == (tolerated > timing.MIN_TOLERATED_RTT + 1e-9)


def test_every_accepted_config_survives_800ms_round_trips():
    assert timing.MIN_TOLERATED_RTT == pytest.approx(0.9)


def test_config_tolerance_line_names_the_tightest_role():
    assert timing.config_tolerance_line(10, {"a": 1.0, "b": 5.0}) == (
        "ttl 10s, stop_timeout 5s: tolerates round trips up to 2.4s (tightest role: b)")
    assert timing.config_tolerance_line(4, {}) == (
        "ttl 4s, no lease-bound role: keepalives tolerate round trips up to 2s")


def test_start_deadline_is_one_cadence_before_the_term():
    # ttl 4, stop_timeout 0.5: term 2.3 s after t_k, starts only until 1.3 s after it:
    # a confirmation that old means a round trip the config does not tolerate (1.2 s)
    assert timing.start_deadline(100.0, 4, 0.5) == pytest.approx(101.3)
    assert timing.start_deadline(0.0, 4, 0.5) > timing.tolerated_round_trip(4, 0.5)
