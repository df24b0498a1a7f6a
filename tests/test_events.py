from __future__ import annotations

from enum import StrEnum

import pytest
from pydantic import ValidationError

from integration_events.events import (
    IntegrationEvent,
    declarations,
    event_class_for,
    forget_event_class,
)
from tests.eventapp.events import ProbeHappened


class T(StrEnum):
    THING_HAPPENED = "tests.thing-happened"


def test_topic_from_constant_and_registry() -> None:
    class ThingHappened(IntegrationEvent, topic=T.THING_HAPPENED):
        x: int

    try:
        assert ThingHappened.topic == "tests.thing-happened"
        assert event_class_for("tests.thing-happened") is ThingHappened
        assert declarations()["tests.thing-happened"][0].topic_was_constant
    finally:
        forget_event_class(ThingHappened)
    assert event_class_for("tests.thing-happened") is None


def test_events_are_immutable_and_validated() -> None:
    event = ProbeHappened(n=1)
    with pytest.raises(ValidationError):
        event.n = 2  # type: ignore[misc]
    with pytest.raises(ValidationError):
        ProbeHappened(n="x")  # type: ignore[arg-type]


def test_json_round_trip_ignores_added_fields() -> None:
    event = ProbeHappened.model_validate_json('{"n": 4, "new_field": [1, 2]}')
    assert event == ProbeHappened(n=4)
    assert ProbeHappened.model_validate_json(event.model_dump_json()) == event


def test_empty_topic_rejected() -> None:
    with pytest.raises(TypeError, match="topic"):
        class Bad(IntegrationEvent, topic=""):
            pass
