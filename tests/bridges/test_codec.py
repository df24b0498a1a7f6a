"""integration_events.bridges.codec: CAP's wire format both ways, against golden fixtures
shaped as CAP's code builds them (tests/bridges/fixtures/README.md)."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from integration_events.bridges import (
    Delivery,
    InboundMessage,
    Naming,
    OutboundMessage,
    Rejection,
    RejectReason,
    WireEncodingError,
    decode_delivery,
    encode_message,
)
from integration_events.bridges.wire import correlation_uuid, parse_sent_time

from .cap_events import fixture, validate

FIXTURES = ["cap_publish_person", "cap_message_test_user", "cap_delayed_order"]
# What CAP's publisher puts on every message (ICapPublisher.Default.cs).
CAP_HEADERS = {"cap-msg-id", "cap-corr-id", "cap-corr-seq", "cap-msg-name", "cap-msg-type",
               "cap-senttime"}
INVARIANT = re.compile(r"\d\d/\d\d/\d{4} \d\d:\d\d:\d\d \+00:00")
NOW = datetime(2025, 5, 20, tzinfo=UTC)


def as_delivery(shape: dict[str, Any], tag: int = 1) -> Delivery:
    return Delivery(delivery_tag=tag, routing_key=shape["routing_key"],
                    body=shape["body"].encode(), headers=shape["headers"],
                    content_type=shape["properties"]["content_type"],
                    exchange=shape["exchange"])


def decode(delivery: Delivery, naming: Naming = Naming.PASCAL,
           limit: int = 1_048_576) -> InboundMessage | Rejection:
    return decode_delivery(delivery, bridge="rabbit", naming=naming, max_body_bytes=limit,
                           now=NOW)


@pytest.mark.parametrize("name", FIXTURES)
def test_cap_messages_decode_and_validate_into_our_events(
    name: str, cap_events: dict[str, Any]
) -> None:
    shape = fixture(name)
    message = decode(as_delivery(shape))
    assert isinstance(message, InboundMessage)
    headers = shape["headers"]
    assert message.wire_id == headers["cap-msg-id"]
    assert message.topic == shape["expect"]["topic"]
    assert message.type_name == headers["cap-msg-type"]
    assert message.correlation_sequence == 0
    assert message.correlation_id == correlation_uuid(headers["cap-corr-id"])
    assert message.sent_at == datetime.fromisoformat(shape["expect"]["sent_at"])
    # Local headers: ours, plus every wire header as it came (to re-emit and to show).
    assert message.headers["bridge"] == "rabbit"
    assert message.headers["correlation-id"] == str(message.correlation_id)
    assert {k: message.headers[k] for k in headers} == headers
    event = validate(cap_events[message.topic], message.content)
    assert json.loads(event.model_dump_json()) == shape["expect"]["event"]


def test_decimals_keep_every_digit_through_the_renaming() -> None:
    message = decode(as_delivery(fixture("cap_delayed_order")))
    assert isinstance(message, InboundMessage)
    assert '"unit_price":123456789012345678.25' in message.content
    assert '"placed_at":"2025-05-16T15:04:05.1234567+08:00"' in message.content


def test_our_message_has_caps_shape_field_by_field(cap_events: dict[str, Any]) -> None:
    shape = fixture("cap_publish_person")
    person = cap_events["sample.rabbitmq.mysql"](id=1, name="ef.transaction")
    message_id, correlation = uuid.uuid4(), uuid.uuid4()
    out = encode_message(
        topic=person.topic, message_id=message_id, content=person.model_dump_json(),
        headers={"sent-at": "2025-05-16T07:04:05+00:00", "event-version": 1,
                 "correlation-id": str(correlation), "correlation-sequence": 0},
        naming=Naming.PASCAL, type_name=type(person).__name__,
    )
    assert isinstance(out, OutboundMessage)
    assert out.routing_key == shape["routing_key"]
    assert out.delivery_mode == shape["properties"]["delivery_mode"]
    assert out.body == shape["body"].encode()  # byte for byte what System.Text.Json writes
    assert set(out.headers) >= CAP_HEADERS
    assert all(isinstance(v, str) for v in out.headers.values())
    assert out.headers["cap-msg-name"] == shape["headers"]["cap-msg-name"]
    assert out.headers["cap-msg-type"] == shape["headers"]["cap-msg-type"]
    assert out.headers["cap-corr-seq"] == shape["headers"]["cap-corr-seq"]
    assert out.headers["cap-msg-id"] == out.wire_id == str(message_id)
    assert out.headers["cap-corr-id"] == str(correlation)
    assert out.headers["cap-senttime"] == "05/16/2025 07:04:05 +00:00"
    assert INVARIANT.fullmatch(out.headers["cap-senttime"])
    assert parse_sent_time(out.headers["cap-senttime"]) == datetime(2025, 5, 16, 7, 4, 5,
                                                                    tzinfo=UTC)
    # Our own headers travel too; the ones CAP's headers stand for do not.
    assert out.headers["event-version"] == "1"
    assert not {"sent-at", "correlation-id", "correlation-sequence", "message-id"} & set(
        out.headers)


def test_a_received_message_sent_on_keeps_its_wire_ids(cap_events: dict[str, Any]) -> None:
    shape = fixture("cap_publish_person")
    received = decode(as_delivery(shape))
    assert isinstance(received, InboundMessage)
    out = encode_message(topic=received.topic, message_id=uuid.uuid4(),
                         content=received.content, headers=received.headers,
                         naming=Naming.PASCAL)
    for key in ("cap-msg-id", "cap-corr-id", "cap-corr-seq", "cap-msg-type", "cap-senttime"):
        assert out.headers[key] == shape["headers"][key]
    assert "bridge" not in out.headers and "cap-callback-name" not in out.headers
    assert out.body == shape["body"].encode()


def test_a_reply_in_a_cap_chain_re_emits_the_original_correlation_id() -> None:
    original = "1923273228417118208"
    out = encode_message(topic="a.b", message_id=uuid.uuid4(), content="{}", naming=Naming.PASCAL,
                         headers={"correlation-id": str(correlation_uuid(original)),
                                  "correlation-sequence": 3, "cap-corr-id": original})
    assert (out.headers["cap-corr-id"], out.headers["cap-corr-seq"]) == (original, "3")
    assert out.headers["cap-msg-id"] != original  # a new message: its own id
    other = encode_message(topic="a.b", message_id=uuid.uuid4(), content="{}",
                           naming=Naming.PASCAL,
                           headers={"correlation-id": str(uuid.uuid4()), "cap-corr-id": original})
    assert other.headers["cap-corr-id"] != original  # not derived from it: our own


def test_a_message_round_trips_through_the_codec(cap_events: dict[str, Any]) -> None:
    order = validate(cap_events["sales.order-placed"],
                     decode_content(fixture("cap_delayed_order")))
    out = encode_message(topic=order.topic, message_id=uuid.uuid4(),
                         content=order.model_dump_json(), naming=Naming.CAMEL,
                         headers={"correlation-id": str(uuid.uuid4())})
    assert b'"orderId"' in out.body and b'"unitPrice"' in out.body
    back = decode(Delivery(1, out.routing_key, out.body, out.headers), naming=Naming.CAMEL)
    assert isinstance(back, InboundMessage)
    assert validate(type(order), back.content) == order


def decode_content(shape: dict[str, Any]) -> str:
    message = decode(as_delivery(shape))
    assert isinstance(message, InboundMessage)
    return message.content


def test_encoding_refuses_content_that_is_not_json_or_too_large() -> None:
    with pytest.raises(WireEncodingError, match="not JSON"):
        encode_message(topic="a.b", message_id="1", content="{", headers={},
                       naming=Naming.PASCAL)
    with pytest.raises(WireEncodingError, match="over the limit of 10"):
        encode_message(topic="a.b", message_id="1", content='{"a": "0123456789"}',
                       headers={}, naming=Naming.PASCAL, max_body_bytes=10)


GOOD = {"cap-msg-id": "7", "cap-msg-name": "a.b", "cap-corr-seq": "0"}


@pytest.mark.parametrize(
    ("headers", "body", "content_type", "reason"),
    [
        (GOOD, b"\xff\xfe{}", None, RejectReason.NOT_UTF8),
        (GOOD, b"{not json", None, RejectReason.NOT_JSON),
        (GOOD, b'{"A": NaN}', None, RejectReason.NOT_JSON),
        ({**GOOD, "cap-msg-id": None}, b"{}", None, RejectReason.MISSING_ID),
        ({"cap-msg-name": "a.b"}, b"{}", None, RejectReason.MISSING_ID),
        ({"cap-msg-id": "7"}, b"{}", None, RejectReason.MISSING_TOPIC),
        (GOOD, b'{"A": "' + b"x" * 100 + b'"}', None, RejectReason.TOO_LARGE),
        (GOOD, b'{"A": "\x00"}', None, RejectReason.NUL_BYTES),
        ({**GOOD, "note": "a\x00b"}, b"{}", None, RejectReason.NUL_BYTES),
        (GOOD, b"<a/>", "application/xml", RejectReason.WRONG_CONTENT_TYPE),
        (GOOD, b"{}", "application/json; charset=latin-1", RejectReason.WRONG_CONTENT_TYPE),
        ({**GOOD, "cap-corr-seq": "one"}, b"{}", None, RejectReason.BROKEN_HEADERS),
        ({**GOOD, "cap-corr-seq": "-1"}, b"{}", None, RejectReason.BROKEN_HEADERS),
        ({**GOOD, "x": b"\xff"}, b"{}", None, RejectReason.BROKEN_HEADERS),
        ({**GOOD, "cap-msg-id": {"a": "b"}}, b"{}", None, RejectReason.BROKEN_HEADERS),
    ],
)
def test_poison_input_is_rejected_with_its_reason(
    headers: dict[str, Any], body: bytes, content_type: str | None, reason: RejectReason
) -> None:
    result = decode(Delivery(9, "a.b", body, headers, content_type=content_type), limit=64)
    assert isinstance(result, Rejection)
    assert result.reason is reason
    assert result.delivery_tag == 9
    assert result.body_size == len(body)
    assert result.raw_body == body[:64 * 1024]
    assert "\x00" not in result.preview and "\x00" not in json.dumps(result.headers)
    assert result.describe().startswith(f"rejected ({reason.value}): ")


def test_rejections_keep_a_capped_copy_and_what_is_known() -> None:
    body = b'"' + b"\x00" * 200_000 + b'"'
    result = decode(Delivery(1, "a.b", body, GOOD), limit=10_000_000)
    assert isinstance(result, Rejection) and result.reason is RejectReason.NUL_BYTES
    assert (result.wire_id, result.topic) == ("7", "a.b")
    assert len(result.raw_body) == 64 * 1024 and result.body_size == len(body)
    assert result.preview.startswith('"\\x00\\x00')


@pytest.mark.parametrize("body", [b"", b"  "])
def test_an_empty_body_is_a_null_value_as_cap_sends_it(body: bytes) -> None:
    message = decode(Delivery(1, "a.b", body, GOOD))
    assert isinstance(message, InboundMessage) and message.content == "null"


def test_lenient_where_cap_is() -> None:
    headers = {"cap-msg-id": b"7", "cap-msg-name": b"a.b", "cap-corr-seq": 2,
               "cap-corr-id": b"1923273228417118208", "cap-callback-name": None}
    message = decode(Delivery(1, "a.b", b"\xef\xbb\xbf{}", headers,
                              content_type="application/vnd.cap+json; charset=utf-8"))
    assert isinstance(message, InboundMessage)
    assert (message.wire_id, message.topic, message.correlation_sequence) == ("7", "a.b", 2)
    assert message.headers["cap-callback-name"] is None
    assert message.sent_at is None and "sent-at" not in message.headers
