"""integration_events.bridges.amqp_consumer: a peer written with plain pika sends
CAP-format messages (some twice, some poison); the consumer reads them in prefetched
batches, acks with multiple=True, rejects to a dead-letter exchange, and survives the
connection going."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pika
import pytest

from integration_events.bridges import InboundMessage, Rejection, RejectReason, decode_delivery
from integration_events.bridges.amqp_consumer import AmqpConsumer
from integration_events.bridges.errors import BrokerConnectionLost, BrokerUnavailable

from .cap_events import fixture, validate
from .conftest import rabbitmqctl

FIXTURES = ["cap_publish_person", "cap_message_test_user", "cap_delayed_order"]
TOPICS = ["sample.#", "authentication.*.*", "sales.*", "poison.#"]


def cap_send(peer: Any, exchange: str, shape: dict[str, Any], **overrides: Any) -> None:
    """Publish as CAP's RabbitMQTransport.SendAsync does (persistent, string headers)."""
    headers = {**shape["headers"], **overrides.pop("headers", {})}
    peer.basic_publish(
        exchange, overrides.pop("routing_key", shape["routing_key"]),
        overrides.pop("body", shape["body"].encode()),
        pika.BasicProperties(delivery_mode=2, headers=headers, **overrides),
    )


def read_all(consumer: AmqpConsumer, expect: int, **kwargs: Any) -> list[Any]:
    got: list[Any] = []
    while len(got) < expect:
        batch = consumer.fetch(idle_timeout=3.0, **kwargs)
        if not batch:
            break
        got.extend(batch)
        consumer.ack_through(batch[-1].delivery_tag)
    return got


def decode(config: Any, delivery: Any) -> InboundMessage | Rejection:
    return decode_delivery(delivery, bridge=config.name, naming=config.naming,
                           max_body_bytes=config.max_body_bytes)


def test_cap_messages_sent_twice_are_read_and_carry_the_same_wire_id(
    bridge: Callable[..., Any], peer: Any, cap_events: dict[str, Any]
) -> None:
    config = bridge(RECEIVE=TOPICS)
    with AmqpConsumer(config) as consumer:
        for name in FIXTURES:
            cap_send(peer, config.exchange, fixture(name))
        cap_send(peer, config.exchange, fixture(FIXTURES[0]))  # CAP retried it
        cap_send(peer, config.exchange, fixture(FIXTURES[2]))
        got = read_all(consumer, 5)
    messages = [decode(config, d) for d in got]
    assert all(isinstance(m, InboundMessage) for m in messages)
    assert len(messages) == 5
    # De-duplicating on (bridge, wire id, topic) leaves each message once.
    unique = {(m.bridge, m.wire_id, m.topic): m for m in messages}  # type: ignore[union-attr]
    assert len(unique) == 3
    for message in unique.values():
        event = validate(cap_events[message.topic], message.content)
        assert event.topic == message.topic


def test_prefetch_bounds_what_is_unacknowledged_and_ack_through_settles_a_batch(
    bridge: Callable[..., Any], peer: Any
) -> None:
    config = bridge(RECEIVE=TOPICS, PREFETCH=10)
    shape = fixture("cap_publish_person")
    with AmqpConsumer(config) as consumer:
        for n in range(25):
            cap_send(peer, config.exchange, shape, headers={"cap-msg-id": str(n)})
        first = consumer.fetch(idle_timeout=3.0)
        assert [d.delivery_tag for d in first] == list(range(1, 11))
        assert consumer.fetch(idle_timeout=0.3) == []  # the window is full until an ack
        consumer.ack_through(first[-1].delivery_tag)
        second = consumer.fetch(idle_timeout=3.0, max_messages=4)
        assert [d.delivery_tag for d in second] == [11, 12, 13, 14]
        consumer.ack_through(12)  # 13 and 14 stay unacknowledged
    # Closing requeues what was not acknowledged; the acked ones are gone.
    with AmqpConsumer(config) as consumer:
        rest = read_all(consumer, 13)
    assert len(rest) == 13
    assert sorted(int(d.headers["cap-msg-id"]) for d in rest) == list(range(12, 25))
    assert {d.redelivered for d in rest if int(d.headers["cap-msg-id"]) < 20} == {True}


def poison(peer: Any, exchange: str) -> dict[RejectReason, str]:
    """One delivery of each poison kind; returns the wire id given to each."""
    shape = fixture("cap_publish_person")
    sent = {}

    def send(reason: RejectReason, **overrides: Any) -> None:
        wire_id = f"poison-{reason.value}"
        headers = {"cap-msg-id": wire_id, "cap-msg-name": "poison.x",
                   **overrides.pop("headers", {})}
        cap_send(peer, exchange, shape, routing_key="poison.x", headers=headers, **overrides)
        sent[reason] = wire_id

    send(RejectReason.NOT_UTF8, body=b"\xff\xfe")
    send(RejectReason.NOT_JSON, body=b"{oops")
    send(RejectReason.TOO_LARGE, body=b'{"A": "' + b"x" * 5000 + b'"}')
    send(RejectReason.NUL_BYTES, body=b'{"A": "\x00"}')
    send(RejectReason.WRONG_CONTENT_TYPE, content_type="text/csv")
    send(RejectReason.BROKEN_HEADERS, headers={"cap-corr-seq": "two"})
    cap_send(peer, exchange, shape, routing_key="poison.x",
             headers={"cap-msg-id": None, "cap-msg-name": "poison.x"})
    sent[RejectReason.MISSING_ID] = ""
    cap_send(peer, exchange, shape, routing_key="poison.x",
             headers={"cap-msg-id": "poison-missing-topic", "cap-msg-name": None})
    sent[RejectReason.MISSING_TOPIC] = "poison-missing-topic"
    return sent


def test_poison_between_good_messages_is_rejected_with_reasons_and_goes_to_the_dlx(
    bridge: Callable[..., Any], peer: Any, unique: Callable[[str], str]
) -> None:
    dlx, dead = unique("dlx"), unique("dead")
    peer.exchange_declare(exchange=dlx, exchange_type="fanout", durable=True)
    peer.queue_declare(queue=dead, durable=True)
    peer.queue_bind(queue=dead, exchange=dlx)
    config = bridge(RECEIVE=TOPICS, DEAD_LETTER_EXCHANGE=dlx, MAX_BODY_BYTES=1000)
    good = fixture("cap_message_test_user")
    with AmqpConsumer(config) as consumer:
        cap_send(peer, config.exchange, good, headers={"cap-msg-id": "good-1"})
        sent = poison(peer, config.exchange)
        cap_send(peer, config.exchange, good, headers={"cap-msg-id": "good-2"})
        deliveries = []
        while len(deliveries) < 10:
            batch = consumer.fetch(idle_timeout=3.0)
            assert batch, f"only {len(deliveries)} deliveries arrived"
            for delivery in batch:
                if isinstance(decode(config, delivery), Rejection):
                    consumer.reject(delivery.delivery_tag)  # before the ack that covers it
            consumer.ack_through(batch[-1].delivery_tag)
            deliveries.extend(batch)
        assert consumer.fetch(idle_timeout=0.3) == []  # nothing requeued: no loop
    results = [decode(config, d) for d in deliveries]
    assert [r.wire_id for r in results if isinstance(r, InboundMessage)] == ["good-1", "good-2"]
    rejected = {r.reason: r for r in results if isinstance(r, Rejection)}
    assert set(rejected) == set(RejectReason)
    for reason, wire_id in sent.items():
        assert (rejected[reason].wire_id or "") == wire_id
    assert rejected[RejectReason.TOO_LARGE].body_size > 5000
    dead_count = peer.queue_declare(queue=dead, passive=True).method.message_count
    assert dead_count == len(RejectReason)


def test_without_a_dlx_a_rejected_delivery_is_dropped(
    bridge: Callable[..., Any], peer: Any
) -> None:
    config = bridge(RECEIVE=TOPICS)
    with AmqpConsumer(config) as consumer:
        cap_send(peer, config.exchange, fixture("cap_publish_person"), body=b"{oops")
        (delivery,) = consumer.fetch(idle_timeout=3.0)
        consumer.reject(delivery.delivery_tag)
        assert consumer.fetch(idle_timeout=0.3) == []
    assert peer.queue_declare(queue=config.queue, passive=True).method.message_count == 0


def test_the_connection_going_is_a_typed_error_and_unacked_deliveries_come_back(
    bridge: Callable[..., Any], vhost: str
) -> None:
    config = bridge(RECEIVE=TOPICS)
    consumer = AmqpConsumer(config)
    consumer.connect()
    connection = pika.BlockingConnection(pika.ConnectionParameters(
        "127.0.0.1", 5672, vhost, pika.PlainCredentials("guest", "guest")))
    cap_send(connection.channel(), config.exchange, fixture("cap_publish_person"))
    connection.close()
    (first,) = consumer.fetch(idle_timeout=3.0)
    assert not first.redelivered
    rabbitmqctl("close_all_connections", "--vhost", vhost, "outage drill")
    with pytest.raises(BrokerConnectionLost, match="Back off and connect again"):
        consumer.fetch(idle_timeout=3.0)
    with pytest.raises(BrokerUnavailable, match="call connect"):
        consumer.ack_through(first.delivery_tag)
    consumer.connect()
    (again,) = consumer.fetch(idle_timeout=3.0)
    assert again.redelivered and again.headers == first.headers
    consumer.ack_through(again.delivery_tag)
    consumer.close()


def test_no_broker_is_a_typed_error(bridge: Callable[..., Any]) -> None:
    config = bridge(RECEIVE=TOPICS, URL="amqp://guest:guest@127.0.0.1:1/", CONNECT_TIMEOUT=2)
    with pytest.raises(BrokerUnavailable, match="cannot connect to the broker"):
        AmqpConsumer(config).connect()


def test_a_bridge_without_a_queue_cannot_consume(bridge: Callable[..., Any]) -> None:
    config = bridge(QUEUE=None)
    with pytest.raises(ValueError, match="no QUEUE"):
        AmqpConsumer(config)


def test_an_idle_wait_ends_soon_after_stop_is_set(bridge: Callable[..., Any]) -> None:
    """The idle wait (5 s here) looks at ``stop`` every STOP_CHECK: the stream yields the
    empty batch it was waiting for and ends."""
    config = bridge(RECEIVE=TOPICS)
    stop = threading.Event()
    with AmqpConsumer(config) as consumer:
        threading.Timer(0.2, stop.set).start()
        started = time.monotonic()
        assert list(consumer.batches(idle_timeout=5.0, stop=stop)) == [[]]
        took = time.monotonic() - started
    assert took < 2.5, f"the stream took {took:.2f} s to end"


def test_batches_yields_empty_lists_when_idle(bridge: Callable[..., Any], peer: Any) -> None:
    config = bridge(RECEIVE=TOPICS)
    with AmqpConsumer(config) as consumer:
        stream = consumer.batches(idle_timeout=0.1)
        assert next(stream) == []
        cap_send(peer, config.exchange, fixture("cap_publish_person"),
                 headers={"cap-msg-id": uuid.uuid4().hex})
        batch = next(b for b in stream if b)
        assert len(batch) == 1
