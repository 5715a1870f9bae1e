"""One retry policy (coord/retry.py) and one duration formatter (timing.py): issue 18, item 3."""

import re
from pathlib import Path

import pytest

from etcdvisor.coord.errors import CoordError
from etcdvisor.coord.retry import (
    ALIVE_RECORD_RETRY,
    CONFLICT_RETRY,
    STORE_RETRY,
    RetriesExhausted,
    RetryPolicy,
)
from etcdvisor.recipes.counter import Contention
from etcdvisor.timing import format_duration, format_elapsed

SRC = Path(__file__).resolve().parents[2] / "src" / "etcdvisor"


def test_runner_policies_keep_their_delays():
    assert [STORE_RETRY.delay(n) for n in range(4)] == [0.0, 1.0, 1.0, 1.0]
    assert [ALIVE_RECORD_RETRY.delay(n) for n in range(1, 7)] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_conflict_retry_goes_at_once_then_full_jitter_under_a_doubling_cap():
    assert CONFLICT_RETRY.delay(1) == 0.0
    assert [CONFLICT_RETRY.delay(n, rand=lambda: 0.0) for n in (2, 3, 4, 5, 10)] == [0.004, 0.008, 0.016, 0.032, 0.05]
    assert CONFLICT_RETRY.delay(3, rand=lambda: 0.999) == pytest.approx(0.008 * 0.001)


def test_gives_up_by_attempts_or_deadline():
    policy = RetryPolicy(initial=0.5, max_attempts=3, deadline=10.0)
    assert not policy.gives_up(2, 9.9)
    assert policy.gives_up(3, 0.0)
    assert policy.gives_up(1, 10.0)
    assert not RetryPolicy().gives_up(10**6, 10**6)


def test_attempts_wait_and_raise_a_coord_error_naming_the_operation():
    now = [0.0]
    attempts = RetryPolicy(initial=0.0, max_delay=0.0, max_attempts=3).attempts("counter 'k'", clock=lambda: now[0])
    assert [attempts.wait(), attempts.wait()] == [0.0, 0.0]
    with pytest.raises(RetriesExhausted, match="counter 'k': gave up after 3 conflicting attempts") as caught:
        attempts.wait()
    assert isinstance(caught.value, CoordError) and isinstance(caught.value, Contention)


def test_a_deadline_bounds_the_last_wait():
    now = [0.0]
    attempts = RetryPolicy(initial=5.0, max_delay=5.0, deadline=0.01).attempts("x", clock=lambda: now[0])
    assert attempts.wait() <= 0.01


@pytest.mark.parametrize("bad", [dict(initial=-1), dict(factor=0.5), dict(jitter=1.5), dict(max_attempts=0),
                                 dict(deadline=-1.0)])
def test_bad_policies_are_refused(bad):
    with pytest.raises(ValueError):
        RetryPolicy(**bad)


def test_no_runner_keeps_a_retry_number_of_its_own():
    """Runners and the runtime retry through coord/retry.py's named policies."""
    own = re.compile(r"^\w*RETRY\w* = [0-9.]+", re.M)
    offenders = [str(p.relative_to(SRC)) for folder in ("roles", "runtime") for p in (SRC / folder).rglob("*.py")
                 if own.search(p.read_text())]
    assert offenders == []


def test_one_duration_formatter():
    assert [format_duration(v) for v in (10.0, 6.5, 0.25, 1 / 3)] == ["10s", "6.5s", "0.25s", "0.333s"]
    assert [format_elapsed(v) for v in (-3, 0, 42.9, 192, 3900, 2 * 86400 + 3 * 3600 + 5)] == \
        ["0s", "0s", "42s", "3m12s", "1h5m", "2d3h"]
