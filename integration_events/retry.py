"""Retry policy: capped exponential backoff with jitter, and the one place that decides
whether a failed attempt is retried or final."""

from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from .exceptions import PermanentFailure


@dataclass(frozen=True)
class Retry:
    """Try again after ``delay`` seconds."""

    delay: float


@dataclass(frozen=True)
class GiveUp:
    """The failure is final (the dead letter); ``reason`` says why."""

    reason: str


Decision = Retry | GiveUp


def retry_after(exc: BaseException | None) -> float:
    """The minimum delay an exception asks for (a ``retry_after`` attribute in seconds or as
    a timedelta, e.g. from an HTTP Retry-After), or 0."""
    value: Any = getattr(exc, "retry_after", None)
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return max(0.0, float(value))
    return 0.0


@dataclass(frozen=True)
class RetryStrategy:
    """When to try a failed message again, and when to give up.

    ``delay(n)`` for the n-th failed attempt (1-based) is ``min(max_delay, base_delay * 2**(n-1))``
    scaled by a random factor in ``[1 - jitter, 1]`` ("equal jitter" for jitter=0.5), so that
    messages that failed together do not all come back at the same instant.

    With the defaults (base 5 s, cap 1 h, 10 attempts) the nine waits add up to about
    40 minutes (between 21 and 42 with jitter): long enough to ride out a deploy or a short
    outage, short enough that a dead letter shows up the same hour.
    """

    max_attempts: int = 10
    base_delay: float = 5.0
    max_delay: float = 3600.0
    jitter: float = 0.5
    # Give up on a message older than this many seconds whatever its attempts (None: no age
    # limit). A broker bridge fails rows by age, not by count (a long outage costs no count).
    max_age: float | None = None

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.base_delay < 0 or self.max_delay < 0:
            raise ValueError("delays must not be negative")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError("jitter must be between 0 and 1")
        if self.max_age is not None and self.max_age <= 0:
            raise ValueError("max_age must be positive")

    def with_overrides(self, **overrides: Any) -> RetryStrategy:
        """This strategy with the given fields replaced (None values are ignored)."""
        given = {k: v for k, v in overrides.items() if v is not None}
        return dataclasses.replace(self, **given) if given else self

    def should_retry(self, attempts: int) -> bool:
        """True while another attempt is allowed after ``attempts`` failed ones."""
        return attempts < self.max_attempts

    def delay(self, attempts: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after the ``attempts``-th failed attempt."""
        exponent = max(0, attempts - 1)
        # Cap the exponent first: 2**1000 would overflow a float long before the cap applies.
        raw = self.base_delay * (2 ** min(exponent, 62))
        capped = min(self.max_delay, raw)
        r = (rng or random).random()
        return capped * (1.0 - self.jitter * r)

    def decide(
        self, attempts: int, exc: BaseException | None = None, rng: random.Random | None = None,
        *, age: float = 0.0,
    ) -> Decision:
        """Retry or give up after the ``attempts``-th failed attempt that raised ``exc``, of a
        message ``age`` seconds old.

        A PermanentFailure gives up at once; otherwise the attempts (and ``max_age``) decide.
        A retry waits the backoff delay, or longer if the exception carries a
        ``retry_after``."""
        if isinstance(exc, PermanentFailure):
            return GiveUp("permanent failure")
        if not self.should_retry(attempts):
            return GiveUp(f"{attempts} of {self.max_attempts} attempts used")
        if self.max_age is not None and age >= self.max_age:
            return GiveUp(f"older than {self.max_age:g} s")
        return Retry(max(self.delay(attempts, rng), retry_after(exc)))
