from __future__ import annotations

import random

import pytest

from integration_events.retry import RetryStrategy


def test_exponential_with_cap_and_no_jitter() -> None:
    s = RetryStrategy(max_attempts=20, base_delay=2, max_delay=60, jitter=0)
    assert [s.delay(n) for n in range(1, 8)] == [2, 4, 8, 16, 32, 60, 60]


def test_equal_jitter_stays_within_half_and_full() -> None:
    s = RetryStrategy(base_delay=10, max_delay=1000, jitter=0.5)
    rng = random.Random(1)
    samples = [s.delay(3, rng) for _ in range(500)]
    assert min(samples) >= 20 and max(samples) <= 40
    assert max(samples) - min(samples) > 15, "jitter spreads the retries"


def test_huge_attempt_numbers_do_not_overflow() -> None:
    assert RetryStrategy(max_delay=3600, jitter=0).delay(10_000) == 3600


def test_should_retry_until_the_limit() -> None:
    s = RetryStrategy(max_attempts=3)
    assert [s.should_retry(n) for n in (1, 2, 3, 4)] == [True, True, False, False]


@pytest.mark.parametrize("kwargs", [{"max_attempts": 0}, {"jitter": 2}, {"base_delay": -1}])
def test_invalid(kwargs) -> None:
    with pytest.raises(ValueError):
        RetryStrategy(**kwargs)
