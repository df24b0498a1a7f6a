"""integration_events.bridging.receiving: delivered messages stored in the outbox once
each, run by the local subscribers once, and bad wire input stored as failed messages with
its reason. Against the real database (every backend); no broker needed here."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from django.test import override_settings

from integration_events.bridges import parse_bridge
from integration_events.bridges.wire import correlation_uuid
from integration_events.bridging.receiving import store_batch
from integration_events.models import MessageStatus, PublishedMessage, ReceivedMessage
from integration_events.signals import message_failed
from integration_events.worker import Worker
from tests.eventapp.models import Delivery as DeliveryRow

from .helpers import POISON, POISON_MAX_BODY, cap_delivery

# dbspecific: the MariaDB run covers storing too (INSERT IGNORE and its unique index).
pytestmark = [pytest.mark.django_db, pytest.mark.dbspecific]

BRIDGE = {"TRANSPORT": "amqp", "URL": "amqp://127.0.0.1/", "QUEUE": "rx.v1",
          "RECEIVE": ["probe.#"]}


def config(name: str = "rx", **keys: Any) -> Any:
    return parse_bridge(name, {**BRIDGE, **keys})


def received(**filters: Any) -> list[PublishedMessage]:
    return list(PublishedMessage.objects.exclude(origin="").filter(**filters).order_by("wire_id"))


def test_each_message_is_stored_once_with_its_origin_wire_id_and_chain() -> None:
    batch = [cap_delivery("1001", n=1), cap_delivery("1002", n=2), cap_delivery("1001", n=1),
             cap_delivery("1003", n=3, headers={"cap-corr-id": "900", "cap-corr-seq": "4",
                                                "traceparent": "00-" + "a" * 32 + "-"
                                                               + "b" * 16 + "-01",
                                                "tracestate": "vendor=x"})]
    result = store_batch(batch, config(), "default")
    assert (result.stored, result.duplicates, result.rejected) == (3, 1, 0)
    again = store_batch(batch, config(), "default")  # redelivered after a crash before the ack
    assert (again.stored, again.duplicates) == (0, 4)
    rows = received()
    assert [(r.origin, r.wire_id, r.topic, r.status) for r in rows] == [
        ("rx", w, "probe.probe-happened", MessageStatus.PENDING) for w in ("1001", "1002", "1003")]
    assert json.loads(rows[0].content) == {"n": 1, "behaviour": "ok"}, "names back in snake_case"
    assert rows[0].id.version == 7 and rows[0].id != uuid.UUID(int=1001)
    chained = rows[2]
    assert chained.correlation_id == correlation_uuid("900") and chained.correlation_sequence == 4
    # The original CAP headers are kept for sending on, and the trace context for tracing.
    assert chained.headers["cap-corr-id"] == "900" and chained.headers["bridge"] == "rx"
    assert chained.headers["traceparent"].startswith("00-aaaa")
    assert chained.headers["tracestate"] == "vendor=x"


def test_the_same_wire_id_over_another_bridge_or_topic_is_another_message() -> None:
    store_batch([cap_delivery("7")], config("rx"), "default")
    store_batch([cap_delivery("7")], config("ry"), "default")
    store_batch([cap_delivery("7", topic="probe.lonely-happened")], config("rx"), "default")
    assert len(received(wire_id="7")) == 3


def test_received_messages_run_the_local_subscribers_once() -> None:
    batch = [cap_delivery(str(n), n=n) for n in range(5)]
    store_batch(batch, config(), "default")
    Worker(keep_leases=False).run_until_idle()
    store_batch(batch[:3], config(), "default")  # the broker delivers some again
    Worker(keep_leases=False).run_until_idle()
    assert sorted(DeliveryRow.objects.values_list("group", "n")) == sorted(
        (group, n) for group in ("probe-a", "probe-b") for n in range(5))
    assert ReceivedMessage.objects.filter(status=MessageStatus.SUCCEEDED).count() == 10


@pytest.mark.parametrize(("reason", "kwargs"), POISON, ids=[p[0] for p in POISON])
def test_bad_wire_input_is_stored_failed_with_its_reason(reason: str,
                                                         kwargs: dict[str, Any]) -> None:
    result = store_batch(
        [cap_delivery("10", n=10), cap_delivery("11", **kwargs), cap_delivery("12", n=12)],
        config(MAX_BODY_BYTES=POISON_MAX_BODY), "default")
    assert (result.stored, result.rejected) == (3, 1)
    bad = PublishedMessage.objects.get(status=MessageStatus.FAILED)
    assert bad.origin == "rx" and bad.error_type == "WireRejected"
    assert bad.last_error.startswith(f"WireRejected: rejected ({reason}): ")
    assert bad.headers["bridge-rejected"] == reason
    assert len(bad.content) <= 64 * 1024 + 100 and "\x00" not in bad.content
    Worker(keep_leases=False).run_until_idle()
    assert sorted(DeliveryRow.objects.values_list("n", flat=True)) == [10, 10, 12, 12]
    assert not ReceivedMessage.objects.filter(message=bad).exists(), "no handler sees it"


def test_a_rejection_is_announced_as_failed_after_commit(django_capture_on_commit_callbacks
                                                         ) -> None:
    failed: list[Any] = []

    def on_failed(sender: Any, message: Any, **kw: Any) -> None:
        failed.append(message.wire_id)

    message_failed.connect(on_failed)
    try:
        with django_capture_on_commit_callbacks(execute=True):
            store_batch([cap_delivery("20", body=b"<xml/>")], config(), "default")
        with django_capture_on_commit_callbacks(execute=True):
            store_batch([cap_delivery("20", body=b"<xml/>")], config(), "default")
    finally:
        message_failed.disconnect(on_failed)
    assert failed == ["20"], "once, for the message stored; not for its redelivery"


def test_an_unknown_topic_is_stored_and_retried_by_the_unknown_topic_rule() -> None:
    store_batch([cap_delivery("30", topic="billing.invoice-paid")], config(), "default")
    Worker(keep_leases=False).run_until_idle()
    row = PublishedMessage.objects.get(wire_id="30")
    assert (row.status, row.attempts, row.error_type) == (MessageStatus.RETRYING, 1,
                                                          "UnknownTopic")


def test_a_chain_past_max_hops_is_stored_failed() -> None:
    with override_settings(INTEGRATION_EVENTS={"MAX_HOPS": 5}):
        store_batch([cap_delivery("40", headers={"cap-corr-seq": "6"}),
                     cap_delivery("41", headers={"cap-corr-seq": "5"})], config(), "default")
    rows = {r.wire_id: r for r in received()}
    assert rows["40"].status == MessageStatus.FAILED
    assert rows["40"].error_type == "HopLimitExceeded" and "MAX_HOPS=5" in rows["40"].last_error
    assert rows["41"].status == MessageStatus.PENDING


@pytest.fixture
def order_events(cap_events: dict[str, Any], temp_subscriber: Any) -> Iterator[list[Any]]:
    seen: list[Any] = []
    order_placed = cap_events["sales.order-placed"]

    def handler(event: order_placed) -> None:  # type: ignore[valid-type]
        seen.append(event)

    temp_subscriber("sales.order-placed", group="sales-test")(handler)
    yield seen


def test_decimals_from_another_service_keep_every_digit(order_events: list[Any]) -> None:
    body = (b'{"OrderId": "0b0e4a0e-8a43-4a53-8e2c-5f1c3c6d8e9f", "Customer": '
            b'{"DisplayName": "Ada", "AddressLine2": null}, "Lines": [{"Sku": "x", '
            b'"Quantity": 1, "UnitPrice": 123456789012345678901234.5678}], '
            b'"PlacedAt": "2025-05-16T15:04:05+08:00"}')
    store_batch([cap_delivery("50", topic="sales.order-placed", body=body)],
                config(RECEIVE=["sales.#"]), "default")
    Worker(keep_leases=False).run_until_idle()
    (event,) = order_events
    assert event.lines[0].unit_price == Decimal("123456789012345678901234.5678")


# --- what the database refuses -----------------------------------------------------------------

@pytest.mark.django_db(transaction=True)
def test_a_row_the_database_refuses_is_kept_as_unstorable_and_the_rest_stored(refuse) -> None:
    refuse("headers")
    result = store_batch([cap_delivery("60", n=60),
                          cap_delivery("61", n=61, headers={"refuse-me": "1"}),
                          cap_delivery("62", n=62)], config(), "default")
    assert (result.stored, result.dead_letter, result.dropped) == (3, [], 0)
    rows = {r.wire_id: r for r in received()}
    assert rows["61"].status == MessageStatus.FAILED and rows["61"].error_type == "Unstorable"
    assert "refused by a test trigger" in rows["61"].last_error
    assert json.loads(rows["61"].content) == {"n": 61, "behaviour": "ok"}
    assert rows["60"].status == rows["62"].status == MessageStatus.PENDING


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("dead_letter_exchange", [None, "rx.dlx"])
def test_a_row_refused_even_as_a_failed_message_is_dead_lettered_or_dropped(
        refuse, dead_letter_exchange: str | None) -> None:
    refuse("topic")
    refused = cap_delivery("70", topic="probe.refused")
    result = store_batch([cap_delivery("71", n=71), refused],
                         config(RECEIVE=["probe.#"], DEAD_LETTER_EXCHANGE=dead_letter_exchange),
                         "default")
    assert result.stored == 1 and [r.wire_id for r in received()] == ["71"]
    if dead_letter_exchange:
        assert (result.dead_letter, result.dropped) == ([refused.delivery_tag], 0)
    else:
        assert (result.dead_letter, result.dropped) == ([], 1)
