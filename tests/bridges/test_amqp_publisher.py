"""integration_events.bridges.amqp_publisher: batches with publisher confirms, returns of
unroutable messages, nacks, and the connection going away mid-batch, against RabbitMQ and
a peer written with plain pika."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest

from integration_events.bridges import Naming, OutboundMessage, encode_message
from integration_events.bridges.amqp_publisher import AmqpPublisher, PublishOutcome
from integration_events.bridges.errors import (
    BrokerConnectionLost,
    BrokerUnavailable,
    TopologyConflict,
)

from .conftest import drain, rabbitmqctl


def message(topic: str, n: int = 0) -> OutboundMessage:
    return encode_message(
        topic=topic, message_id=uuid.uuid4(), content=f'{{"item_no": {n}}}',
        headers={"correlation-id": str(uuid.uuid4()), "correlation-sequence": 1,
                 "sent-at": "2025-05-16T07:04:05+00:00", "traceparent": "00-ab-cd-01"},
        naming=Naming.PASCAL, type_name="ItemCounted",
    )


@pytest.fixture
def publisher(bridge: Callable[..., Any]) -> Any:
    config = bridge(SEND=["#"])
    with AmqpPublisher.for_bridge(config) as pub:
        yield pub


def peer_queue(peer: Any, exchange: str, *keys: str) -> str:
    """The peer's own queue, bound to the exchange (declared by the peer, as CAP would)."""
    name = f"iet-peer-{uuid.uuid4().hex[:8]}"
    peer.exchange_declare(exchange=exchange, exchange_type="topic", durable=True)
    peer.queue_declare(queue=name, durable=True)
    for key in keys or ("#",):
        peer.queue_bind(queue=name, exchange=exchange, routing_key=key)
    return name


def test_the_peer_receives_what_is_published_and_confirmed(publisher: Any, peer: Any) -> None:
    queue = peer_queue(peer, publisher.exchange)
    batch = [message("equipment.equipment-created", n) for n in range(3)]
    results = publisher.publish_batch(batch)
    assert [r.outcome for r in results] == [PublishOutcome.CONFIRMED] * 3
    assert [r.wire_id for r in results] == [m.wire_id for m in batch]
    got = drain(peer, queue, expect=3)
    assert len(got) == 3
    for (method, properties, body), sent in zip(got, batch, strict=True):
        assert method.exchange == publisher.exchange
        assert method.routing_key == "equipment.equipment-created"
        assert properties.delivery_mode == 2
        assert properties.content_type == "application/json"
        assert properties.headers == sent.headers  # every value a string, as CAP's are
        assert all(isinstance(v, str) for v in properties.headers.values())
        assert body == sent.body
    assert [b for _, _, b in got] == [b'{"ItemNo": 0}', b'{"ItemNo": 1}', b'{"ItemNo": 2}']


def test_unroutable_messages_come_back_as_returned_in_their_place(
    publisher: Any, peer: Any
) -> None:
    queue = peer_queue(peer, publisher.exchange, "billing.#")
    batch = [message("billing.paid"), message("nobody.listens"), message("billing.due"),
             message("nobody.else")]
    results = publisher.publish_batch(batch)
    assert [r.outcome for r in results] == [
        PublishOutcome.CONFIRMED, PublishOutcome.RETURNED,
        PublishOutcome.CONFIRMED, PublishOutcome.RETURNED,
    ]
    assert not results[1].ok and "312 NO_ROUTE" in results[1].detail
    assert "'nobody.listens'" in results[1].detail
    assert len(drain(peer, queue, expect=2)) == 2


def test_a_full_queue_nacks(publisher: Any, peer: Any) -> None:
    name = f"iet-full-{uuid.uuid4().hex[:8]}"
    peer.exchange_declare(exchange=publisher.exchange, exchange_type="topic", durable=True)
    peer.queue_declare(queue=name, durable=True,
                       arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    peer.queue_bind(queue=name, exchange=publisher.exchange, routing_key="full.#")
    results = publisher.publish_batch([message("full.a"), message("full.b")])
    assert [r.outcome for r in results] == [PublishOutcome.CONFIRMED, PublishOutcome.NACKED]


def test_many_messages_in_one_batch(publisher: Any, peer: Any) -> None:
    queue = peer_queue(peer, publisher.exchange)
    results = publisher.publish_batch([message("bulk.item", n) for n in range(500)])
    assert all(r.ok for r in results) and len(results) == 500
    assert peer.queue_declare(queue=queue, passive=True).method.message_count == 500
    assert publisher.publish_batch([]) == []


class ClosingPublisher(AmqpPublisher):
    """Has the broker close every connection of the vhost after the k-th message of a
    batch, as `rabbitmqctl close_all_connections` does in an outage drill."""

    def __init__(self, *args: Any, vhost: str, after: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.vhost, self.after, self.sent = vhost, after, 0

    def _publish_one(self, message: OutboundMessage) -> None:
        super()._publish_one(message)
        self.sent += 1
        if self.sent == self.after:
            rabbitmqctl("close_all_connections", "--vhost", self.vhost, "outage drill")


def test_connection_closed_mid_batch_raises_a_typed_error_and_reconnecting_works(
    bridge: Callable[..., Any], vhost: str, peer: Any
) -> None:
    config = bridge(SEND=["#"])
    queue = peer_queue(peer, config.exchange)
    pub = ClosingPublisher(config.url, config.exchange, vhost=vhost, after=20)
    pub.connect()
    batch = [message("drill.item", n) for n in range(100)]
    with pytest.raises(BrokerConnectionLost) as info:
        pub.publish_batch(batch)
    results = info.value.results
    assert len(results) == 100 and "Back off and connect again" in str(info.value)
    outcomes = {r.outcome for r in results}
    assert outcomes <= {PublishOutcome.CONFIRMED, PublishOutcome.CONNECTION_LOST}
    assert all(r.outcome is PublishOutcome.CONNECTION_LOST for r in results[20:])
    assert not pub.is_open
    confirmed = sum(r.ok for r in results)
    # Only what the broker confirmed is claimed; the rest is sent again after reconnecting.
    pub.after = -1
    pub.connect()
    again = pub.publish_batch([m for m, r in zip(batch, results, strict=True) if not r.ok])
    assert all(r.ok for r in again)
    pub.close()
    import pika

    fresh = pika.BlockingConnection(pika.ConnectionParameters(
        "127.0.0.1", 5672, vhost, pika.PlainCredentials("guest", "guest"))).channel()
    count = fresh.queue_declare(queue=queue, passive=True).method.message_count
    # Every message arrived; one that arrived but whose confirm was lost arrives twice
    # (at least once: the receiver de-duplicates on the wire id).
    assert 100 <= count <= 100 + (100 - confirmed)
    fresh.connection.close()


def test_a_connection_dropped_while_idle_is_replaced_before_the_next_batch(
    publisher: Any, vhost: str
) -> None:
    rabbitmqctl("close_all_connections", "--vhost", vhost, "idle drop")
    results = publisher.publish_batch([message("idle.item")])
    assert results[0].outcome is PublishOutcome.RETURNED  # sent on a new connection
    assert publisher.is_open


def test_no_broker_is_a_typed_error() -> None:
    pub = AmqpPublisher("amqp://guest:secret@127.0.0.1:1/", "x", connect_timeout=2)
    with pytest.raises(BrokerUnavailable) as info:
        pub.connect()
    assert "127.0.0.1:1" in str(info.value) and "secret" not in str(info.value)
    with pytest.raises(BrokerUnavailable, match="not connected: call connect"):
        pub.publish_batch([message("a.b")])


def test_an_exchange_of_another_type_is_a_topology_conflict(
    bridge: Callable[..., Any], peer: Any
) -> None:
    config = bridge()
    peer.exchange_declare(exchange=config.exchange, exchange_type="fanout", durable=True)
    with pytest.raises(TopologyConflict, match="durable topic exchange"):
        AmqpPublisher.for_bridge(config).connect()


def test_confirms_that_do_not_come_in_time_are_a_typed_error(
    bridge: Callable[..., Any], peer: Any
) -> None:
    config = bridge(SEND=["#"])
    queue = peer_queue(peer, config.exchange)
    pub = AmqpPublisher(config.url, config.exchange, confirm_timeout=0.0005)
    pub.connect()
    with pytest.raises(BrokerConnectionLost, match="no confirm within CONFIRM_TIMEOUT") as info:
        pub.publish_batch([message("slow.item", n) for n in range(2000)])
    outcomes = {r.outcome for r in info.value.results}
    assert PublishOutcome.TIMED_OUT in outcomes
    assert outcomes <= {PublishOutcome.TIMED_OUT, PublishOutcome.CONFIRMED}
    with pytest.raises(BrokerUnavailable, match="call connect"):
        pub.publish_batch([message("slow.item")])
    pub.confirm_timeout = 30
    pub.connect()
    assert pub.publish_batch([message("slow.item")])[0].ok
    pub.close()
    assert peer.queue_declare(queue=queue, passive=True).method.message_count >= 1
