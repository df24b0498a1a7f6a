"""The configuration checks (the topic checks are in test_topic_checks.py)."""

from __future__ import annotations

import pytest
from django.core.management import call_command
from django.test import override_settings

from integration_events.checks import check_configuration

GOOD_Q = {"timeout": 120, "retry": 180, "orm": "default", "workers": 1}


def ids(**overrides) -> set[str]:
    with override_settings(**overrides):
        return {m.id for m in check_configuration()}


@pytest.mark.django_db
def test_project_configuration_is_clean() -> None:
    assert {m.id for m in check_configuration()} == set()
    call_command("check", fail_level="WARNING")


def test_bad_setting_is_reported() -> None:
    assert "integration_events.E001" in ids(INTEGRATION_EVENTS={"NOPE": 1})


def test_django_q_missing() -> None:
    from django.conf import settings

    apps = [a for a in settings.INSTALLED_APPS if a != "django_q"]
    assert "integration_events.E002" in ids(INSTALLED_APPS=apps)


def test_q_cluster_timeout_missing_or_not_below_retry() -> None:
    assert "integration_events.E003" in ids(Q_CLUSTER={"retry": 60})
    assert "integration_events.E004" in ids(Q_CLUSTER={"timeout": 60, "retry": 60})
    assert "integration_events.E005" in ids(
        Q_CLUSTER=GOOD_Q, INTEGRATION_EVENTS={"TASK_TIME_BUDGET": 100})


def test_linger_shorter_than_nudge_window() -> None:
    assert "integration_events.E006" in ids(
        Q_CLUSTER=GOOD_Q, INTEGRATION_EVENTS={"IDLE_LINGER": 0.5, "NUDGE_WINDOW": 2})


def test_unknown_alias_and_cache() -> None:
    assert "integration_events.E007" in ids(INTEGRATION_EVENTS={"DATABASES": ["other"]})
    assert "integration_events.E008" in ids(INTEGRATION_EVENTS={"NUDGE_CACHE": "missing"})
    dummy = {"default": {"BACKEND": "django.core.cache.backends.dummy.DummyCache"}}
    assert "integration_events.E009" in ids(CACHES=dummy)


def test_sqlite_warnings() -> None:
    sqlite = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": "x.sqlite3"}}
    found = ids(DATABASES=sqlite, Q_CLUSTER={**GOOD_Q, "workers": 4})
    assert {"integration_events.W001", "integration_events.W002"} <= found
    tuned = {"default": {**sqlite["default"], "OPTIONS": {"transaction_mode": "IMMEDIATE"}}}
    assert ids(DATABASES=tuned, Q_CLUSTER=GOOD_Q) == set()
