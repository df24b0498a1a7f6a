"""integration_events.bridges.checks: the check messages for the BRIDGES setting."""

from __future__ import annotations

from typing import Any

import pytest

from integration_events.bridges.checks import check_bridges

KNOWN = ["equipment.equipment-created", "billing.invoice-paid", "files.file-deleted"]


def entry(**keys: Any) -> dict[str, Any]:
    return {"rabbit": {"TRANSPORT": "amqp", "URL": "amqp://h/", "QUEUE": "q", **keys}}


def installed(module: str) -> bool:
    """The library check's answer when the extra is installed (these tests run without it
    too, on the oldest supported Python and Django)."""
    return True


def ids(raw: Any, **kwargs: Any) -> list[str]:
    return [m.id for m in check_bridges(raw, KNOWN, **{"has_library": installed, **kwargs})]


def test_a_good_bridge_has_no_messages() -> None:
    assert ids(entry(SEND=["equipment.*"], RECEIVE=["billing.#"])) == []


def test_invalid_settings_are_one_error_per_bridge_with_the_reason() -> None:
    raw = {**entry(SEND="equipment.*"), "other": {"TRANSPORT": "amqp", "URL": "http://h/"}}
    messages = check_bridges(raw, KNOWN, has_library=installed)
    assert [m.id for m in messages] == ["integration_events.E100"] * 2
    assert '["rabbit"]["SEND"]' in messages[0].msg and '["other"]["URL"]' in messages[1].msg
    (message,) = check_bridges("rabbit", KNOWN)
    assert message.id == "integration_events.E100" and "must be a dict" in message.msg


def test_an_unknown_transport_names_the_known_ones() -> None:
    (message,) = check_bridges(entry(TRANSPORT="kafka"), KNOWN, has_library=installed)
    assert message.id == "integration_events.E104"
    assert "'kafka'" in message.msg and "'amqp'" in str(message.hint)


def test_a_missing_library_names_the_extra() -> None:
    (message,) = check_bridges(entry(), KNOWN, has_library=lambda module: False)
    assert message.id == "integration_events.E101"
    assert "needs pika" in message.msg and "[amqp]" in str(message.hint)


def test_patterns_matching_no_known_topic_warn() -> None:
    messages = check_bridges(entry(SEND=["equipment.*", "equipmnet.*"], RECEIVE=["bill.#"]),
                             KNOWN, has_library=installed)
    assert [m.id for m in messages] == ["integration_events.W102"] * 2
    assert "'equipmnet.*'" in messages[0].msg and '["RECEIVE"]' in messages[1].msg


def test_overlapping_send_and_receive_is_an_error_with_an_example() -> None:
    messages = check_bridges(entry(SEND=["equipment.*"], RECEIVE=["#.equipment-created"]),
                             KNOWN, has_library=installed)
    assert [m.id for m in messages] == ["integration_events.E103"]
    assert "'equipment.equipment-created'" in messages[0].msg


@pytest.mark.django_db
def test_the_checks_are_registered_and_not_reported_twice() -> None:
    from django.conf import settings
    from django.core.management import call_command
    from django.core.management.base import SystemCheckError
    from django.test import override_settings

    bridges = {"rabbit": {"TRANSPORT": "amqp", "URL": "amqp://h/", "QUEUE": "q",
                          "SEND": ["probe.*"], "RECEIVE": ["probe.#", "nowhere.#"]},
               "other": {"TRANSPORT": "zeromq", "URL": "amqp://h/"}}
    with override_settings(INTEGRATION_EVENTS={**settings.INTEGRATION_EVENTS,
                                               "BRIDGES": bridges}), \
            pytest.raises(SystemCheckError) as info:
        call_command("check")
    text = str(info.value)
    assert "integration_events.E103" in text and "SEND 'probe.*' and RECEIVE 'probe.#'" in text
    assert "integration_events.E104" in text and "integration_events.W102" in text
    assert "integration_events.E001" not in text, "BRIDGES problems have their own ids"


def test_the_docs_list_every_bridge_check_id() -> None:
    import re
    from pathlib import Path

    import integration_events.bridges.checks as module

    emitted = set(re.findall(r'id="integration_events\.([EW]1\d\d)"',
                             Path(module.__file__).read_text()))
    docs = (Path(__file__).parents[2] / "docs" / "bridges.md").read_text()
    documented = set(re.findall(r"^\| `?([EW]1\d\d)`? \|", docs, re.MULTILINE))
    assert emitted == documented == {"E100", "E101", "W102", "E103", "E104"}
