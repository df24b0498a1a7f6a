"""The topic system checks (integration_events.checks.check_topics): each fires on a bad
event class or subscriber registered for the test, and all are silent on the sample apps.

No ``from __future__ import annotations`` here: the handlers below are annotated with event
classes defined inside the test functions, and the registry resolves annotations when the
decorator runs, from the module's globals, where a string annotation naming a local class
could not be found.
"""

from collections.abc import Iterator
from enum import StrEnum

import pytest
from django.core import checks
from django.core.management import call_command

from accounts.events import UserDeleted
from accounts.topics import AccountsTopics
from equipment.events import EquipmentCreated
from integration_events import IntegrationEvent, MessageContext, subscriber
from integration_events.checks import TOPIC_PATTERN, check_topics
from integration_events.events import declarations, forget_event_class
from integration_events.registry import all_subscriptions, unregister

GROUP = "topic-checks-test"


class CheckTopics(StrEnum):
    THING_HAPPENED = "checktest.thing-happened"
    BAD_NAME = "CheckTest.Thing_Happened"
    DUPLICATE = "checktest.duplicate-happened"
    TYPO = "checktest.thing-hapened"


@pytest.fixture
def cleanup() -> Iterator[list[object]]:
    """Collects event classes and (topic, group) pairs to unregister after the test."""
    registered: list[object] = []
    yield registered
    for item in registered:
        if isinstance(item, tuple):
            unregister(*item)
        else:
            forget_event_class(item)  # type: ignore[arg-type]


def ids(messages: list[checks.CheckMessage]) -> list[str]:
    return sorted(m.id or "" for m in messages)


def ours(messages: list[checks.CheckMessage]) -> list[checks.CheckMessage]:
    """Only the messages about this test's objects (the probe apps have their own)."""
    return [m for m in messages if __name__ in str(m.msg) or CheckTopics.__name__ in str(m.msg)
            or "checktest" in str(m.msg).lower()]


def test_silent_on_the_sample_apps() -> None:
    sample = ("accounts.", "equipment.", "files.")
    about_samples = [
        m for m in check_topics()
        if any(s in str(m.msg) for s in sample)
        or getattr(m.obj, "__module__", "").startswith(sample)
    ]
    assert about_samples == []


def test_silent_when_nothing_is_wrong(cleanup: list[object]) -> None:
    class ThingHappened(IntegrationEvent, topic=CheckTopics.THING_HAPPENED):
        n: int

    @subscriber(CheckTopics.THING_HAPPENED, group=GROUP)
    def handler(event: ThingHappened, context: MessageContext) -> None: ...

    cleanup += [ThingHappened, (CheckTopics.THING_HAPPENED, GROUP)]
    assert ours(check_topics()) == []


def test_e010_subscriber_to_a_topic_nobody_declares(cleanup: list[object]) -> None:
    class ThingHappened(IntegrationEvent, topic=CheckTopics.THING_HAPPENED):
        n: int

    @subscriber(CheckTopics.TYPO, group=GROUP)
    def handler(event: ThingHappened) -> None: ...

    cleanup += [ThingHappened, (CheckTopics.TYPO, GROUP)]
    found = ours(check_topics())
    assert ids(found) == ["integration_events.E010"]
    assert found[0].obj is handler
    assert "checktest.thing-happened" in (found[0].hint or "")  # the near miss is suggested


def test_e011_two_classes_declare_one_topic(cleanup: list[object]) -> None:
    class First(IntegrationEvent, topic=CheckTopics.DUPLICATE):
        n: int

    class Second(IntegrationEvent, topic=CheckTopics.DUPLICATE):
        n: int

    cleanup += [First, Second]
    found = ours(check_topics())
    assert ids(found) == ["integration_events.E011"]
    assert "First" in found[0].msg and "Second" in found[0].msg
    assert found[0].hint


def test_e012_annotation_mismatch(cleanup: list[object]) -> None:
    @subscriber(AccountsTopics.USER_DELETED, group=GROUP)
    def handler(event: EquipmentCreated, context: MessageContext) -> None: ...

    cleanup.append((AccountsTopics.USER_DELETED, GROUP))
    found = [m for m in check_topics() if m.obj is handler]
    assert ids(found) == ["integration_events.E012"]
    assert "UserDeleted" in found[0].msg and "EquipmentCreated" in found[0].msg


def test_e012_missing_annotation(cleanup: list[object]) -> None:
    @subscriber(AccountsTopics.USER_DELETED, group=GROUP)
    def handler(event, context):  # type: ignore[no-untyped-def]  # noqa: ANN001
        ...

    cleanup.append((AccountsTopics.USER_DELETED, GROUP))
    found = [m for m in check_topics() if m.obj is handler]
    assert ids(found) == ["integration_events.E012"]
    assert "UserDeleted" in (found[0].hint or "")


def test_annotating_a_base_class_of_the_event_is_accepted(cleanup: list[object]) -> None:
    @subscriber(AccountsTopics.USER_DELETED, group=GROUP)
    def handler(event: IntegrationEvent) -> None: ...

    cleanup.append((AccountsTopics.USER_DELETED, GROUP))
    assert [m for m in check_topics() if m.obj is handler] == []


def test_w013_inline_topic_string_on_an_event(cleanup: list[object]) -> None:
    class Inline(IntegrationEvent, topic="checktest.inline-happened"):
        n: int

    cleanup.append(Inline)
    found = [m for m in check_topics() if m.obj is Inline]
    assert ids(found) == ["integration_events.W013"]
    assert found[0].level == checks.WARNING


def test_w013_inline_topic_string_on_a_subscriber(cleanup: list[object]) -> None:
    @subscriber("accounts.user-deleted", group=GROUP)
    def handler(event: UserDeleted) -> None: ...

    cleanup.append((AccountsTopics.USER_DELETED, GROUP))
    found = [m for m in check_topics() if m.obj is handler]
    assert ids(found) == ["integration_events.W013"]


def test_w014_topic_breaking_the_naming_convention(cleanup: list[object]) -> None:
    class BadlyNamed(IntegrationEvent, topic=CheckTopics.BAD_NAME):
        n: int

    cleanup.append(BadlyNamed)
    found = [m for m in check_topics() if m.obj is BadlyNamed]
    assert ids(found) == ["integration_events.W014"]
    assert "kebab-case" in (found[0].hint or "")


@pytest.mark.parametrize("topic", [
    "equipment.equipment-created",
    "equipment.equipment.created",
    "files.file-stored",
    "a1.b2-c3",
])
def test_naming_convention_accepts(topic: str) -> None:
    assert TOPIC_PATTERN.match(topic)


@pytest.mark.parametrize("topic", [
    "equipment",                      # no event part
    "Equipment.EquipmentCreated",     # not lower case
    "equipment.equipment_created",    # snake case
    "equipment.-created",             # empty word
    "equipment.created-",
    "a.b.c.d",                        # too deep
    "equipment..created",
    "equipment.equipment created",
])
def test_naming_convention_rejects(topic: str) -> None:
    assert not TOPIC_PATTERN.match(topic)


@pytest.mark.django_db
def test_the_checks_run_through_manage_py_check(cleanup: list[object]) -> None:
    @subscriber(CheckTopics.TYPO, group=GROUP)
    def handler(event: UserDeleted) -> None: ...

    cleanup.append((CheckTopics.TYPO, GROUP))
    with pytest.raises(Exception, match="E010"):
        call_command("check")


def test_cleanup_really_forgets(cleanup: list[object]) -> None:
    class Temporary(IntegrationEvent, topic=CheckTopics.THING_HAPPENED):
        n: int

    subscriber(CheckTopics.THING_HAPPENED, group=GROUP)(lambda event: None)
    forget_event_class(Temporary)
    unregister(CheckTopics.THING_HAPPENED, GROUP)
    assert CheckTopics.THING_HAPPENED not in declarations()
    assert all(s.group != GROUP for s in all_subscriptions())


def test_e012_annotation_that_does_not_resolve(cleanup: list[object]) -> None:
    def handler(event: "NotImportedHere") -> None:  # type: ignore[name-defined]  # noqa: F821
        ...

    subscriber(AccountsTopics.USER_DELETED, group=GROUP)(handler)
    cleanup.append((AccountsTopics.USER_DELETED, GROUP))
    found = [m for m in check_topics() if m.obj is handler]
    assert ids(found) == ["integration_events.E012"]
    assert "'NotImportedHere'" in found[0].msg and "TYPE_CHECKING" in found[0].msg
