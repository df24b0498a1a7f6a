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


SQLITE = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": "x.sqlite3"}}


@pytest.mark.xfail(strict=True, reason="issue 9.4: check_configuration raises ValueError or "
                   "TypeError today, a traceback from manage.py check")
@pytest.mark.parametrize(("key", "value"), [("timeout", "abc"), ("retry", None), ("workers", "x")])
def test_bad_q_cluster_values_are_check_errors(key: str, value: object) -> None:
    with override_settings(DATABASES=SQLITE, Q_CLUSTER={**GOOD_Q, key: value}):
        found = [m for m in check_configuration() if m.id == "integration_events.E020"]
    assert len(found) == 1
    assert f"Q_CLUSTER[{key!r}]" in found[0].msg and repr(value) in found[0].msg
    assert found[0].hint


@pytest.mark.xfail(strict=True, reason="issue 9.4: the path passes the checks today, then the "
                   "task raises ImproperlyConfigured at every dead letter")
@pytest.mark.parametrize("path", [
    "nowhere.to.be.found",                        # no such module
    "integration_events.conf.no_such_function",   # no such attribute
    "integration_events.conf.SETTING_NAME",       # not callable
])
def test_callback_path_is_imported_by_the_check(path: str) -> None:
    with override_settings(INTEGRATION_EVENTS={"FAILED_THRESHOLD_CALLBACK": path}):
        found = [m for m in check_configuration() if m.id == "integration_events.E021"]
    assert len(found) == 1
    assert path in found[0].msg and found[0].hint


@pytest.mark.xfail(strict=True, reason="issue 11.6: W002's hint names docs/databases.md (not in "
                   "the wheel, not even in the repository); E007 and E008 have no hint")
def test_every_configuration_problem_has_a_hint_without_repository_paths() -> None:
    cases = [
        {"DATABASES": SQLITE, "Q_CLUSTER": {**GOOD_Q, "workers": 4}},  # W001, W002
        {"INTEGRATION_EVENTS": {"DATABASES": ["other"]}},              # E007
        {"INTEGRATION_EVENTS": {"NUDGE_CACHE": "missing"}},            # E008
        {"INTEGRATION_EVENTS": {"IDLE_LINGER": 0.5, "NUDGE_WINDOW": 2}},
        {"INTEGRATION_EVENTS": {"NOPE": 1}},
        {"Q_CLUSTER": {"retry": 60}},
        {"Q_CLUSTER": {"timeout": 60, "retry": 60}},
    ]
    seen = set()
    for overrides in cases:
        with override_settings(**overrides):
            for message in check_configuration():
                seen.add(message.id)
                assert message.hint, message
                assert "docs/" not in message.hint and ".md" not in message.hint, message
    assert {"integration_events.W002", "integration_events.E007",
            "integration_events.E008"} <= seen
    # W002 says what to set: the database's OPTIONS.
    with override_settings(DATABASES=SQLITE):
        (w002,) = [m for m in check_configuration() if m.id == "integration_events.W002"]
    assert "OPTIONS" in w002.hint and "transaction_mode" in w002.hint
