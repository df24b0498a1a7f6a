"""integration_events.bridges.amqp: connection settings and the topology CAP expects."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pika
import pytest

from integration_events.bridges.amqp import connection_parameters, declare_topology
from integration_events.bridges.config import CAP_MESSAGE_TTL_MS
from integration_events.bridges.errors import TopologyConflict


@pytest.mark.parametrize(
    ("url", "vhost"),
    [
        ("amqp://guest:guest@127.0.0.1:5672//", "/"),  # the contract's (kombu's) spelling
        ("amqp://guest:guest@127.0.0.1:5672/", "/"),
        ("amqp://guest:guest@127.0.0.1:5672", "/"),
        ("amqp://guest:guest@127.0.0.1:5672/%2F", "/"),
        ("amqp://guest:guest@127.0.0.1:5672/inventory", "inventory"),
    ],
)
def test_virtual_host_from_the_url(url: str, vhost: str) -> None:
    assert connection_parameters(url, timeout=3, role="t").virtual_host == vhost


def test_credentials_port_tls_and_heartbeat_from_the_url() -> None:
    params = connection_parameters("amqps://svc:p%40ss@broker.example/prod?heartbeat=15",
                                   timeout=3, role="t")
    assert (params.host, params.port, params.heartbeat) == ("broker.example", 5671, 15)
    assert params.credentials.username == "svc" and params.credentials.password == "p@ss"
    assert params.ssl_options is not None
    assert "integration_events t" in params.client_properties["connection_name"]


def cap_declares(channel: Any, queue: str, ttl: int = CAP_MESSAGE_TTL_MS) -> None:
    """What CAP's RabbitMQConsumerClient.Connect() declares for its group's queue."""
    channel.queue_declare(queue=queue, durable=True, exclusive=False, auto_delete=False,
                          arguments={"x-message-ttl": ttl})


def test_our_queue_takes_a_second_declaration_from_cap(
    bridge: Callable[..., Any], peer: Any
) -> None:
    config = bridge(RECEIVE=["billing.#", "files.*"])
    declare_topology(peer, config)
    cap_declares(peer, config.queue)  # a CAP service of the same group: no 406
    peer.exchange_declare(exchange=config.exchange, exchange_type="topic", durable=True)
    # The bindings route what RECEIVE names, and nothing else.
    peer.confirm_delivery()  # so that the count below sees every routed message
    for key in ("billing", "billing.invoice.paid", "files.file-deleted", "accounts.x"):
        peer.basic_publish(config.exchange, key, b"{}")
    count = peer.queue_declare(queue=config.queue, passive=True).method.message_count
    assert count == 3


def test_a_different_declaration_is_what_cap_would_be_refused(
    bridge: Callable[..., Any], peer: Any
) -> None:
    config = bridge(RECEIVE=["a.*"])
    declare_topology(peer, config)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        cap_declares(peer, config.queue, ttl=1000)
    assert info.value.reply_code == 406


def test_a_queue_declared_otherwise_is_a_topology_conflict_with_the_fix(
    bridge: Callable[..., Any], peer: Any, vhost: str
) -> None:
    config = bridge(RECEIVE=["a.*"])
    cap_declares(peer, config.queue, ttl=5000)
    connection = pika.BlockingConnection(connection_parameters(
        config.url, timeout=5, role="test"))
    try:
        with pytest.raises(TopologyConflict) as info:
            declare_topology(connection.channel(), config)
    finally:
        connection.close()
    text = str(info.value)
    assert f"queue {config.queue!r}" in text and "PRECONDITION_FAILED" in text
    assert "QUEUE_MESSAGE_TTL" in text and f"delete_queue {config.queue}" in text


def test_an_exchange_of_another_type_is_a_topology_conflict(
    bridge: Callable[..., Any], peer: Any
) -> None:
    config = bridge()
    peer.exchange_declare(exchange=config.exchange, exchange_type="direct", durable=True)
    connection = pika.BlockingConnection(connection_parameters(
        config.url, timeout=5, role="test"))
    try:
        with pytest.raises(TopologyConflict, match="durable topic exchange"):
            declare_topology(connection.channel(), config)
    finally:
        connection.close()
