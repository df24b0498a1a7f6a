from __future__ import annotations

import math
import re
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db.models import DateTimeField, ExpressionWrapper
from django.db.models.functions import Now
from django.test import override_settings
from django.utils import timezone
from pydantic import ValidationError

from integration_events import conf
from integration_events.conf import (
    MAX_EXPIRY,
    MAX_RETRY_DELAY,
    MAX_ROWS_PER_STATEMENT,
    IntegrationEventsSettings,
    SettingsError,
    build_settings,
    describe,
    get_settings,
    q_cluster_timeout,
)
from integration_events.models import MessageStatus, ReceivedMessage, WorkerNode

FIELDS = IntegrationEventsSettings.model_fields
DOCS = Path(__file__).resolve().parent.parent / "docs" / "settings.md"


def bounds(key: str) -> tuple[float, float] | None:
    """(lowest, highest) allowed value of a numeric key, None for the others."""
    found = {k: getattr(m, k) for m in FIELDS[key].metadata for k in ("ge", "le") if hasattr(m, k)}
    return (found["ge"], found["le"]) if len(found) == 2 else None


NUMERIC = [key for key in FIELDS if bounds(key)]


def valid_with(key: str, value: Any) -> dict[str, Any]:
    """A settings dict with key=value that breaks no rule between keys."""
    if key == "RETRY_BASE_DELAY":
        return {key: value, "RETRY_MAX_DELAY": MAX_RETRY_DELAY}
    if key == "RETRY_MAX_DELAY":
        return {key: value, "RETRY_BASE_DELAY": 0}
    return {key: value}


def test_defaults() -> None:
    s = build_settings({})
    assert (s.MAX_ATTEMPTS, s.RETRY_BASE_DELAY, s.LEASE_SECONDS) == (10, 5.0, 30.0)
    assert s.DATABASES == ("default",)
    assert s.Q_OPTIONS == {} and s.FAILED_THRESHOLD_CALLBACK is None
    assert build_settings(None) == s


def test_ints_stand_for_floats_and_lists_for_tuples() -> None:
    s = build_settings({"LEASE_SECONDS": 10, "DATABASES": ["default", "other"]})
    assert s.LEASE_SECONDS == 10.0 and isinstance(s.LEASE_SECONDS, float)
    assert s.DATABASES == ("default", "other")


def test_settings_are_immutable() -> None:
    s = build_settings({})
    with pytest.raises(ValidationError):
        s.MAX_ATTEMPTS = 3


def test_unknown_key_is_named_with_the_closest_known_one() -> None:
    with pytest.raises(ImproperlyConfigured, match="'MAX_ATTEMPT'") as info:
        build_settings({"MAX_ATTEMPT": 3})
    assert "Did you mean 'MAX_ATTEMPTS'?" in str(info.value)
    assert "Known keys: BRIDGES, CLAIM_BATCH_SIZE, CLAIM_STRATEGY," in str(info.value)
    with pytest.raises(ImproperlyConfigured, match="Did you mean 'LEASE_SECONDS'"):
        build_settings({"lease_seconds": 3})


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("MAX_ATTEMPTS", "3", "a whole number from 1 to 1000"),
    ("MAX_ATTEMPTS", 0, "a whole number from 1 to 1000"),
    ("MAX_ATTEMPTS", True, "a whole number"),
    ("MAX_ATTEMPTS", 3.0, "a whole number"),
    ("RETRY_BASE_DELAY", -1, "a number of seconds from 0 to 604800"),
    ("RETRY_JITTER", 1.5, "a number from 0 to 1"),
    ("LEASE_SECONDS", math.nan, "a number of seconds from 1 to 3600"),
    ("LEASE_SECONDS", "30", "a number of seconds"),
    ("NUDGE", "yes", "True or False"),
    ("NUDGE", 1, "True or False"),
    ("DATABASES", "default", "a non-empty list of database aliases"),
    ("DATABASES", [], "a non-empty list of database aliases"),
    ("DATABASES", [""], "a non-empty list of database aliases"),
    ("FAILED_THRESHOLD_CALLBACK", 42, "a callable or a dotted path"),
    ("FAILED_THRESHOLD_CALLBACK", "not a path", "a callable or a dotted path"),
    ("TASK_TIME_BUDGET", 0, "a number of seconds from 1 to 3600 or None"),
    ("NUDGE_CACHE", "", "a cache alias"),
    ("Q_OPTIONS", [], "a dict"),
])
def test_wrong_values_are_rejected_with_the_key(key: str, value: Any, expected: str) -> None:
    with pytest.raises(ImproperlyConfigured) as info:
        build_settings({key: value})
    message = str(info.value)
    assert message.startswith(f"INTEGRATION_EVENTS[{key!r}] must be {expected}")
    assert f"got {value!r}" in message


def test_every_bad_key_is_reported_at_once() -> None:
    with pytest.raises(SettingsError) as info:
        build_settings({"LEASE_SECONDS": 0, "NUDGE": "no", "NOPE": 1})
    assert [p.key for p in info.value.problems] == ["LEASE_SECONDS", "NUDGE", "NOPE"]
    assert all(p.hint.startswith(("Set ", "Remove ")) for p in info.value.problems[:2])
    assert "leave it out for the default (30.0)" in info.value.problems[0].hint


def test_not_a_dict() -> None:
    with pytest.raises(ImproperlyConfigured, match="must be a dict"):
        build_settings([("MAX_ATTEMPTS", 3)])


def test_max_delay_below_base() -> None:
    with pytest.raises(ImproperlyConfigured, match="RETRY_MAX_DELAY"):
        build_settings({"RETRY_BASE_DELAY": 10, "RETRY_MAX_DELAY": 5})


def test_a_database_alias_listed_twice() -> None:
    with pytest.raises(ImproperlyConfigured, match="names an alias twice"):
        build_settings({"DATABASES": ["default", "default"]})


@pytest.mark.parametrize("key", NUMERIC)
def test_bounds_are_inclusive_and_finite(key: str) -> None:
    low, high = bounds(key)  # type: ignore[misc]
    whole = FIELDS[key].annotation is int
    for value in (low, high):
        assert getattr(build_settings(valid_with(key, value)), key) == value
    step = 1 if whole else 0.001
    for value in (low - step, high + step, *(() if whole else (math.inf, -math.inf))):
        with pytest.raises(ImproperlyConfigured, match=re.escape(f"[{key!r}] must be")):
            build_settings(valid_with(key, value))


@pytest.mark.parametrize("key", NUMERIC)
def test_every_bound_states_its_reason(key: str) -> None:
    reason = FIELDS[key].description
    assert reason and len(reason) > 20
    with pytest.raises(ImproperlyConfigured) as info:
        build_settings(valid_with(key, bounds(key)[1] + 1))  # type: ignore[index]
    assert f"Why: {reason}." in str(info.value)


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
    with override_settings(Q_CLUSTER={}, INTEGRATION_EVENTS={"TASK_TIME_BUDGET": 7}):
        assert get_settings().task_time_budget() == 7


@pytest.mark.parametrize(("q_cluster", "expected"), [
    ({"timeout": "abc"}, "Q_CLUSTER['timeout'] must be a number of seconds above 0"),
    ({"timeout": True}, "Q_CLUSTER['timeout'] must be"),
    ({"timeout": math.inf}, "Q_CLUSTER['timeout'] must be"),
    ({"timeout": 120, "retry": None}, "Q_CLUSTER['retry'] must be"),
    ("not a dict", "Q_CLUSTER must be a dict"),
])
def test_a_bad_q_cluster_timeout_is_named_at_run_time(q_cluster: Any, expected: str) -> None:
    with override_settings(Q_CLUSTER=q_cluster), pytest.raises(ImproperlyConfigured) as info:
        q_cluster_timeout()
    assert str(info.value).startswith(expected)


def test_q_cluster_keys_this_library_does_not_read_are_left_to_django_q() -> None:
    with override_settings(Q_CLUSTER={"timeout": 60, "retry": 90, "poll": "whatever"}):
        assert q_cluster_timeout() == 60.0


def test_callback_path_that_does_not_import() -> None:
    s = build_settings({"FAILED_THRESHOLD_CALLBACK": "nowhere.to.be.found"})
    with pytest.raises(ImproperlyConfigured, match="does not import: ModuleNotFoundError"):
        s.failed_threshold_callback()
    s = build_settings({"FAILED_THRESHOLD_CALLBACK": "integration_events.conf.SETTING_NAME"})
    with pytest.raises(ImproperlyConfigured, match="imports a str, not a callable"):
        s.failed_threshold_callback()
    s = build_settings({"FAILED_THRESHOLD_CALLBACK": "integration_events.conf.get_settings"})
    assert s.failed_threshold_callback() is get_settings


# Issue 9 item 4: values the old type checker accepted that crashed the engine at run time
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


@pytest.mark.parametrize(("key", "value"), RUN_TIME_CRASHES)
def test_values_that_crash_at_run_time_are_rejected(key: str, value: float) -> None:
    expected = rf"INTEGRATION_EVENTS\['{key}'\] must be .*, got {re.escape(repr(value))}"
    with pytest.raises(ImproperlyConfigured, match=expected):
        build_settings({key: value})


@pytest.mark.parametrize("value", [math.inf, 1e12])
def test_retry_base_delay_is_bounded_even_below_the_cap(value: float) -> None:
    with pytest.raises(ImproperlyConfigured, match=r"INTEGRATION_EVENTS\['RETRY_BASE_DELAY'\]"):
        build_settings({"RETRY_BASE_DELAY": value, "RETRY_MAX_DELAY": value})


@pytest.mark.django_db
def test_the_longest_allowed_wait_is_a_date_the_database_stores() -> None:
    """The reason for the expiry and delay bounds, on the database the suite runs on."""
    longest = max(MAX_EXPIRY, MAX_RETRY_DELAY, *(bounds(k)[1] for k in NUMERIC))  # type: ignore[index]
    assert longest == MAX_EXPIRY
    node = WorkerNode.objects.create(name="far:1", hostname="far", pid=1)
    WorkerNode.objects.filter(pk=node.pk).update(last_seen_at=ExpressionWrapper(
        Now() + timedelta(seconds=longest), output_field=DateTimeField()))
    node.refresh_from_db()
    expected = timezone.now() + timedelta(seconds=longest)
    assert abs(node.last_seen_at - expected) < timedelta(minutes=5)
    with pytest.raises(OverflowError):  # what 1e12 s did: past year 9999
        timezone.now() + timedelta(seconds=1e12)


@pytest.mark.django_db
def test_the_largest_allowed_batch_is_one_statement() -> None:
    """The batch-size bound: the claim's and the sweep's IN lists at their longest."""
    assert max(bounds(k)[1] for k in ("CLAIM_BATCH_SIZE", "EXECUTE_BATCH_SIZE",  # type: ignore[index]
                                      "CLEANUP_BATCH_SIZE")) == MAX_ROWS_PER_STATEMENT
    pks = list(range(1, MAX_ROWS_PER_STATEMENT + 1))
    updated = ReceivedMessage.objects.filter(
        pk__in=pks, lease_token=uuid.uuid4(), status=MessageStatus.PROCESSING
    ).update(status=MessageStatus.RETRYING, lease_token=None)
    assert updated == 0


def test_docs_list_every_key_with_its_bounds() -> None:
    """docs/settings.md is written from the same fields; this keeps the two together."""
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| `([A-Z_]+)` \|.*$",
                                                        DOCS.read_text(), re.MULTILINE)}
    assert set(rows) >= set(FIELDS), f"undocumented: {sorted(set(FIELDS) - set(rows))}"
    for key, field in FIELDS.items():
        assert describe(field).split(" (")[0] in rows[key], key
        if field.description:
            assert field.description in rows[key], key


def test_adding_a_key_is_one_line() -> None:
    """How the lead adds PUMP, INSTRUMENTATION, ...: one annotated field, nothing else."""
    from pydantic import Field

    class WithPump(IntegrationEventsSettings):
        PUMP: int = Field(2, ge=1, le=8, description="a test-only key")

    fields = WithPump.model_fields
    assert describe(fields["PUMP"]) == "a whole number from 1 to 8"
    assert conf._validate(WithPump, "X", {"PUMP": 3}).PUMP == 3
    with pytest.raises(SettingsError, match=r"X\['PUMP'\] must be a whole number from 1 to 8"):
        conf._validate(WithPump, "X", {"PUMP": 9})
