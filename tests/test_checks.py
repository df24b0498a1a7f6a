"""The configuration checks (the topic checks are in test_topic_checks.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.core.management import call_command, load_command_class
from django.core.management.base import SystemCheckError
from django.db import connection
from django.test import override_settings

from integration_events.checks import check_configuration

ROOT = Path(__file__).resolve().parent.parent

GOOD_Q = {"timeout": 120, "retry": 180, "orm": "default", "workers": 1}


def ids(**overrides) -> set[str]:
    with override_settings(**overrides):
        return {m.id for m in check_configuration()}


@pytest.mark.django_db
def test_project_configuration_is_clean() -> None:
    assert {m.id for m in check_configuration()} == set()
    # MariaDB adds django-q2's own models.W037 (a partial index it cannot make): not ours.
    call_command("check", fail_level="ERROR" if connection.vendor == "mysql" else "WARNING")


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


@pytest.mark.parametrize(("key", "value"), [("timeout", "abc"), ("retry", None), ("workers", "x")])
def test_bad_q_cluster_values_are_check_errors(key: str, value: object) -> None:
    with override_settings(DATABASES=SQLITE, Q_CLUSTER={**GOOD_Q, key: value}):
        found = [m for m in check_configuration() if m.id == "integration_events.E020"]
    assert len(found) == 1
    assert f"Q_CLUSTER[{key!r}]" in found[0].msg and repr(value) in found[0].msg
    assert found[0].hint


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


def test_every_configuration_problem_has_a_hint_without_repository_paths() -> None:
    cases = [
        {"DATABASES": SQLITE, "Q_CLUSTER": {**GOOD_Q, "workers": 4}},  # W001, W002
        {"INTEGRATION_EVENTS": {"DATABASES": ["other"]}},              # E007
        {"INTEGRATION_EVENTS": {"NUDGE_CACHE": "missing"}},            # E008
        {"INTEGRATION_EVENTS": {"IDLE_LINGER": 0.5, "NUDGE_WINDOW": 2}},
        {"INTEGRATION_EVENTS": {"NOPE": 1}},
        {"Q_CLUSTER": {"retry": 60}},
        {"Q_CLUSTER": {"timeout": 60, "retry": 60}},
        {"Q_CLUSTER": GOOD_Q, "INTEGRATION_EVENTS": {"TASK_TIME_BUDGET": 100}},  # E005
        {"Q_CLUSTER": {**GOOD_Q, "timeout": "abc"}},                             # E020
        {"INTEGRATION_EVENTS": {"FAILED_THRESHOLD_CALLBACK": "nowhere.at.all"}},  # E021
        {"CACHES": {"default": {"BACKEND": "django.core.cache.backends.dummy.DummyCache"}}},
        {"INSTALLED_APPS": ["integration_events"]},                              # E002
    ]
    seen = set()
    for overrides in cases:
        with override_settings(**overrides):
            for message in check_configuration():
                seen.add(message.id)
                assert message.hint, message
                assert "docs/" not in message.hint and ".md" not in message.hint, message
    source = (ROOT / "integration_events" / "checks.py").read_text()
    emitted = {f"integration_events.{i}" for i in re.findall(r'id="integration_events\.(\w+)"',
                                                            source)}
    topics = {i for i in emitted if int(i[-3:]) in range(10, 20)}
    assert seen == emitted - topics  # every configuration check is seen here
    # W002 says what to set: the database's OPTIONS.
    with override_settings(DATABASES=SQLITE):
        (w002,) = [m for m in check_configuration() if m.id == "integration_events.W002"]
    assert "OPTIONS" in w002.hint and "transaction_mode" in w002.hint


@pytest.mark.parametrize(("key", "value"), [
    ("timeout", -5), ("timeout", True), ("timeout", float("inf")), ("timeout", "120"),
    ("retry", "abc"), ("retry", 0), ("workers", 0), ("workers", 2.5),
])
def test_more_bad_q_cluster_values(key: str, value: object) -> None:
    with override_settings(Q_CLUSTER={**GOOD_Q, key: value}):
        found = [m for m in check_configuration() if m.id == "integration_events.E020"]
    assert [f"Q_CLUSTER[{key!r}]" in m.msg for m in found] == [True]


def test_q_cluster_that_is_not_a_dict() -> None:
    assert "integration_events.E020" in ids(Q_CLUSTER=["timeout", 120])


def test_q_cluster_keys_this_library_does_not_read_are_not_checked() -> None:
    assert ids(Q_CLUSTER={**GOOD_Q, "poll": "anything", "bulk": None}) == set()


def test_the_timing_rule_budget_below_timeout_below_retry() -> None:
    ok = {"Q_CLUSTER": {"timeout": 120, "retry": 180}, "INTEGRATION_EVENTS": {}}
    assert ids(**ok) == set()
    assert ids(Q_CLUSTER={"timeout": 120, "retry": 180},
               INTEGRATION_EVENTS={"TASK_TIME_BUDGET": 60}) == set()
    assert ids(Q_CLUSTER={"timeout": 120, "retry": 180},
               INTEGRATION_EVENTS={"TASK_TIME_BUDGET": 61}) == {"integration_events.E005"}
    assert ids(Q_CLUSTER={"timeout": 180, "retry": 120}) == {"integration_events.E004"}
    # Left out, retry is django-q2's 60.
    assert ids(Q_CLUSTER={"timeout": 60}) == {"integration_events.E004"}
    assert ids(Q_CLUSTER={"timeout": 40}) == set()


def test_every_bad_setting_is_its_own_error_with_a_hint() -> None:
    with override_settings(INTEGRATION_EVENTS={"LEASE_SECONDS": 0, "NUDGE": "yes"}):
        found = [m for m in check_configuration() if m.id == "integration_events.E001"]
    assert ["LEASE_SECONDS" in found[0].msg, "NUDGE" in found[1].msg] == [True, True]
    assert "leave it out for the default (30.0)" in found[0].hint


def test_a_usable_callback_passes() -> None:
    for callback in ("integration_events.conf.get_settings", print, None):
        assert ids(Q_CLUSTER=GOOD_Q, INTEGRATION_EVENTS={"FAILED_THRESHOLD_CALLBACK": callback}) \
            == set()


def test_a_callback_module_that_fails_to_import_is_reported() -> None:
    """Importing runs the module's code: a broken module is the same problem as a missing one."""
    path = "tests.settings.no_such_name"  # the module imports; the attribute does not exist
    with override_settings(INTEGRATION_EVENTS={"FAILED_THRESHOLD_CALLBACK": path}):
        (error,) = [m for m in check_configuration() if m.id == "integration_events.E021"]
    assert "ImportError" in error.msg


@pytest.mark.django_db
def test_manage_py_check_reports_instead_of_raising() -> None:
    for overrides in ({"Q_CLUSTER": {**GOOD_Q, "timeout": "abc"}},
                      {"INTEGRATION_EVENTS": {"FAILED_THRESHOLD_CALLBACK": "nowhere.at.all"}}):
        with override_settings(**overrides), pytest.raises(SystemCheckError) as info:
            call_command("check")
        assert "integration_events.E02" in str(info.value)


def test_qcluster_runs_the_checks_before_it_starts() -> None:
    """So an E021 (or any error here) keeps a cluster from starting with the bad setting."""
    command = load_command_class("django_q", "qcluster")
    assert command.requires_system_checks == "__all__"


def test_docs_list_every_check_id() -> None:
    source = (ROOT / "integration_events" / "checks.py").read_text()
    docs = (ROOT / "docs" / "settings.md").read_text()
    emitted = set(re.findall(r'id="integration_events\.([EW]\d{3})"', source))
    documented = set(re.findall(r"^\| ([EW]\d{3})\b", docs, re.MULTILINE))
    assert emitted == documented
