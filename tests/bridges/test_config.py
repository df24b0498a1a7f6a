"""integration_events.bridges.config: one BRIDGES entry, parsed with errors naming the key."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured

from integration_events.bridges import Naming, Transport, parse_bridges
from integration_events.bridges.config import CAP_MESSAGE_TTL_MS

CONTRACT = {
    "rabbit": {
        "TRANSPORT": "amqp",
        "URL": "amqp://guest:guest@127.0.0.1:5672//",
        "EXCHANGE": "cap.default.router",
        "SEND": ["equipment.*"],
        "RECEIVE": ["billing.#"],
        "QUEUE": "inventory.v1",
        "NAMING": "pascal",
    },
}


def bad(entry: dict[str, Any]) -> str:
    with pytest.raises(ImproperlyConfigured) as info:
        parse_bridges({"rabbit": {"TRANSPORT": "amqp", "URL": "amqp://h/", **entry}})
    return str(info.value)


def test_the_contract_from_the_issue_parses_with_the_defaults() -> None:
    bridge = parse_bridges(CONTRACT)["rabbit"]
    assert bridge.name == "rabbit"
    assert bridge.transport is Transport.AMQP
    assert bridge.send == ("equipment.*",)
    assert bridge.receive == ("billing.#",)
    assert bridge.queue == "inventory.v1"
    assert bridge.naming is Naming.PASCAL
    assert bridge.queue_declare_arguments() == {"x-message-ttl": CAP_MESSAGE_TTL_MS}
    assert (bridge.prefetch, bridge.batch_size, bridge.max_body_bytes) == (100, 500, 1_048_576)
    assert bridge.fail_after == 3 * 24 * 3600
    assert bridge.forward_received is False
    assert (bridge.locked_claims, bridge.senders) == (True, 2)
    assert bridge.safe_url == "amqp://guest:***@127.0.0.1:5672//"


def test_sends_and_receives_use_the_patterns() -> None:
    bridge = parse_bridges(CONTRACT)["rabbit"]
    assert bridge.sends("equipment.equipment-created")
    assert not bridge.sends("equipment.a.b")
    assert bridge.receives("billing") and bridge.receives("billing.invoice.paid")
    assert not bridge.receives("accounts.user-deleted")


def test_none_or_empty_means_no_bridges() -> None:
    assert parse_bridges(None) == {}
    assert parse_bridges({}) == {}


def test_queue_arguments_dead_letter_exchange_and_no_ttl() -> None:
    bridge = parse_bridges({"r": {
        "TRANSPORT": "amqp", "URL": "amqps://u:p@broker.example/prod", "QUEUE": "q",
        "QUEUE_MESSAGE_TTL": None, "QUEUE_ARGUMENTS": {"x-queue-type": "quorum"},
        "DEAD_LETTER_EXCHANGE": "dead",
    }})["r"]
    assert bridge.queue_declare_arguments() == {
        "x-queue-type": "quorum", "x-dead-letter-exchange": "dead",
    }


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"TRANSPORT": "kafka"}, '["rabbit"]["TRANSPORT"]: unknown transport \'kafka\''),
        ({"URL": "http://h"}, '["URL"]: must be an amqp:// or amqps:// URL'),
        ({"SNED": ["a"]}, "unknown key(s) 'SNED' (did you mean 'SEND'?)"),
        ({"SEND": "a.*"}, '["SEND"]: must be a list of topic patterns, not one string'),
        ({"SEND": ["a.b*"]}, "the word 'b*': a wildcard must be a whole word"),
        ({"RECEIVE": ["a..b"], "QUEUE": "q"}, "has an empty word"),
        ({"RECEIVE": ["billing.#"]}, 'has RECEIVE patterns but no "QUEUE"'),
        ({"NAMING": "snake"}, "must be one of 'pascal', 'camel', 'as-is'"),
        ({"PREFETCH": 70000}, '["PREFETCH"]: Input should be less than or equal to 65535'),
        ({"QUEUE_ARGUMENTS": {"x-message-ttl": 5}}, "is set through QUEUE_MESSAGE_TTL"),
        ({"FAIL_AFTER": 0}, '["FAIL_AFTER"]: Input should be greater than 0'),
        ({"SENDERS": 0}, '["SENDERS"]: Input should be greater than or equal to 1'),
        ({"SENDERS": 9}, '["SENDERS"]: Input should be less than or equal to 8'),
    ],
)
def test_bad_entries_name_the_bridge_and_the_key(entry: dict[str, Any], expected: str) -> None:
    assert expected in bad(entry)


def test_a_missing_required_key_is_named() -> None:
    with pytest.raises(ImproperlyConfigured, match='needs "URL"'):
        parse_bridges({"rabbit": {"TRANSPORT": "amqp"}})


def test_bad_names_and_shapes() -> None:
    with pytest.raises(ImproperlyConfigured, match="bridge named 'bad name'"):
        parse_bridges({"bad name": {"TRANSPORT": "amqp", "URL": "amqp://h"}})
    with pytest.raises(ImproperlyConfigured, match="must be a dict of bridge name"):
        parse_bridges(["rabbit"])
    with pytest.raises(ImproperlyConfigured, match=r'\["rabbit"\] must be a dict'):
        parse_bridges({"rabbit": "amqp://h"})


# --- the BRIDGES key of INTEGRATION_EVENTS ------------------------------------------------------


def test_the_bridges_key_is_parsed_into_bridge_configs() -> None:
    from integration_events.conf import build_settings

    settings = build_settings({"BRIDGES": {"rabbit": {"TRANSPORT": "amqp", "URL": "amqp://h/",
                                                      "SEND": ["a.*"]}}})
    (config,) = settings.BRIDGES.values()
    assert (config.name, config.send, config.fail_after) == ("rabbit", ("a.*",), 259200.0)
    assert build_settings({}).BRIDGES == {} and build_settings({"BRIDGES": None}).BRIDGES == {}


def test_a_bad_bridges_key_is_one_problem_that_names_the_bridge_and_key() -> None:
    from integration_events.conf import SettingsError, build_settings

    with pytest.raises(SettingsError) as info:
        build_settings({"MAX_ATTEMPTS": 0, "BRIDGES": {"rabbit": {
            "TRANSPORT": "amqp", "URL": "amqp://h/", "SEND": ["a.b*"]}}})
    problems = {p.key: p for p in info.value.problems}
    assert set(problems) == {"MAX_ATTEMPTS", "BRIDGES"}
    assert problems["BRIDGES"].message.startswith(
        'INTEGRATION_EVENTS["BRIDGES"]["rabbit"]["SEND"]: pattern \'a.b*\' has the word')
    assert "docs/bridges.md" in problems["BRIDGES"].hint


@pytest.mark.parametrize(("doc", "start"), [("README.md", 'INTEGRATION_EVENTS = {"BRIDGES"'),
                                            ("docs/bridges.md", "INTEGRATION_EVENTS = {")])
def test_the_documented_settings_are_valid(doc: str, start: str) -> None:
    import re
    from pathlib import Path

    text = (Path(__file__).parents[2] / doc).read_text()
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if b.startswith(start)]
    namespace: dict[str, Any] = {}
    exec(block, namespace)  # noqa: S102 - our own documentation
    (config,) = parse_bridges(namespace["INTEGRATION_EVENTS"]["BRIDGES"]).values()
    assert config.name == "rabbit" and config.queue == "inventory.v1"


def test_every_bridge_key_is_in_the_documented_table() -> None:
    import re
    from pathlib import Path

    from integration_events.bridges.config import BridgeConfig

    text = (Path(__file__).parents[2] / "docs" / "bridges.md").read_text()
    documented = set(re.findall(r"^\| `([A-Z_]+)` \|", text, re.M))
    keys = {field.alias for name, field in BridgeConfig.model_fields.items() if name != "name"}
    assert keys <= documented, keys - documented


def test_batch_size_is_capped_like_every_in_list_of_primary_keys() -> None:
    from integration_events.bridges import config
    from integration_events.conf import MAX_ROWS_PER_STATEMENT

    assert config._MAX_ROWS == MAX_ROWS_PER_STATEMENT
    with pytest.raises(ImproperlyConfigured, match="BATCH_SIZE"):
        parse_bridges({"rabbit": {**CONTRACT["rabbit"], "BATCH_SIZE": MAX_ROWS_PER_STATEMENT + 1}})
