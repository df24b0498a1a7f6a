from __future__ import annotations

import math
import re

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from integration_events.conf import build_settings, get_settings


def test_defaults() -> None:
    s = build_settings({})
    assert (s.MAX_ATTEMPTS, s.RETRY_BASE_DELAY, s.LEASE_SECONDS) == (10, 5.0, 30.0)
    assert s.DATABASES == ("default",)


def test_unknown_key_is_named() -> None:
    with pytest.raises(ImproperlyConfigured, match="'MAX_ATTEMPT'"):
        build_settings({"MAX_ATTEMPT": 3})


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("MAX_ATTEMPTS", "3", "MAX_ATTEMPTS"),
    ("MAX_ATTEMPTS", 0, "at least 1"),
    ("MAX_ATTEMPTS", True, "whole number"),
    ("RETRY_BASE_DELAY", -1, "non-negative"),
    ("RETRY_JITTER", 1.5, "between 0 and 1"),
    ("NUDGE", "yes", "True or False"),
    ("DATABASES", "default", "list of database aliases"),
    ("FAILED_THRESHOLD_CALLBACK", 42, "callable"),
    ("TASK_TIME_BUDGET", 0, "positive"),
])
def test_wrong_types_are_rejected_with_the_key(key, value, expected) -> None:
    with pytest.raises(ImproperlyConfigured, match=expected) as info:
        build_settings({key: value})
    assert key in str(info.value)


def test_not_a_dict() -> None:
    with pytest.raises(ImproperlyConfigured, match="must be a dict"):
        build_settings([("MAX_ATTEMPTS", 3)])


def test_max_delay_below_base() -> None:
    with pytest.raises(ImproperlyConfigured, match="RETRY_MAX_DELAY"):
        build_settings({"RETRY_BASE_DELAY": 10, "RETRY_MAX_DELAY": 5})


def test_read_lazily_so_override_settings_works() -> None:
    before = get_settings().MAX_ATTEMPTS
    with override_settings(INTEGRATION_EVENTS={"MAX_ATTEMPTS": before + 7}):
        assert before + 7 == get_settings().MAX_ATTEMPTS
    assert before == get_settings().MAX_ATTEMPTS


def test_task_budget_follows_q_cluster_timeout() -> None:
    with override_settings(Q_CLUSTER={"timeout": 40, "retry": 60}, INTEGRATION_EVENTS={}):
        assert get_settings().task_time_budget() == 10
    with override_settings(Q_CLUSTER={"timeout": 1000, "retry": 1200}, INTEGRATION_EVENTS={}):
        assert get_settings().task_time_budget() == 20


def test_callback_path_that_does_not_import() -> None:
    s = build_settings({"FAILED_THRESHOLD_CALLBACK": "nowhere.to.be.found"})
    with pytest.raises(ImproperlyConfigured, match="cannot import"):
        s.failed_threshold_callback()


# Issue 9 item 4: values the type checker accepts that crash the engine at run time
# (timedelta overflow in a claim or an expiry, an IN list no database takes, a nudge window
# that math.ceil cannot turn into a cache timeout).
RUN_TIME_CRASHES = [
    ("LEASE_SECONDS", math.inf),
    ("LEASE_SECONDS", 0),
    ("LEASE_SECONDS", 1e12),
    ("SUCCEEDED_EXPIRY", math.inf),
    ("SUCCEEDED_EXPIRY", 1e12),
    ("FAILED_EXPIRY", math.inf),
    ("FAILED_EXPIRY", 1e12),
    ("RETRY_MAX_DELAY", math.inf),
    ("RETRY_MAX_DELAY", 1e12),
    ("CLAIM_BATCH_SIZE", 10**30),
    ("CLEANUP_BATCH_SIZE", 10**30),
    ("NUDGE_WINDOW", math.inf),
]


@pytest.mark.xfail(strict=True, reason="issue 9.4: accepted today, then crashes the engine")
@pytest.mark.parametrize(("key", "value"), RUN_TIME_CRASHES)
def test_values_that_crash_at_run_time_are_rejected(key: str, value: float) -> None:
    expected = rf"INTEGRATION_EVENTS\['{key}'\] must be .*, got {re.escape(repr(value))}"
    with pytest.raises(ImproperlyConfigured, match=expected):
        build_settings({key: value})


@pytest.mark.xfail(strict=True, reason="issue 9.4: accepted today (the base is not above the "
                   "cap), then the first retry overflows")
@pytest.mark.parametrize("value", [math.inf, 1e12])
def test_retry_base_delay_is_bounded_even_below_the_cap(value: float) -> None:
    with pytest.raises(ImproperlyConfigured, match=r"INTEGRATION_EVENTS\['RETRY_BASE_DELAY'\]"):
        build_settings({"RETRY_BASE_DELAY": value, "RETRY_MAX_DELAY": value})
