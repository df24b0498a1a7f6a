"""The AMQP (RabbitMQ) transport: connection settings, topology, error mapping.

Needs pika (``pip install django-integration-events[amqp]``). ``AmqpPublisher`` and
``AmqpConsumer`` live in amqp_publisher.py and amqp_consumer.py, which build on this module.
"""

from __future__ import annotations

import os
import socket
import ssl
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured

try:
    import pika
    import pika.exceptions
except ImportError as exc:  # pragma: no cover - exercised without the extra installed
    raise ImproperlyConfigured(
        "The RabbitMQ bridge needs pika: pip install 'django-integration-events[amqp]'."
    ) from exc

from .errors import BrokerConnectionLost, BrokerUnavailable, TopologyConflict

if TYPE_CHECKING:
    from .config import BridgeConfig

EXCHANGE_TYPE = "topic"
# AMQP reply codes (AMQP 0-9-1 spec, section 1.9).
PRECONDITION_FAILED = 406
NO_ROUTE = 312


def connection_parameters(url: str, *, timeout: float, role: str) -> pika.ConnectionParameters:
    """pika connection parameters for ``url``.

    The virtual host is the path after the host, percent-decoded, with kombu's convention
    that ``//`` (and an empty path) mean ``/``: ``amqp://guest:guest@127.0.0.1:5672//``.
    ``?heartbeat=N`` is honoured. ``role`` names the connection in the management UI.
    """
    parts = urlsplit(url)
    path = parts.path
    vhost = "/" if path in ("", "/", "//") else unquote(path[1:])
    secure = parts.scheme == "amqps"
    query = parse_qs(parts.query)
    kwargs: dict[str, Any] = {}
    if "heartbeat" in query:
        kwargs["heartbeat"] = int(query["heartbeat"][0])
    if secure:
        context = ssl.create_default_context()
        kwargs["ssl_options"] = pika.SSLOptions(context, parts.hostname)
    return pika.ConnectionParameters(
        host=parts.hostname or "localhost",
        port=parts.port or (5671 if secure else 5672),
        virtual_host=vhost,
        credentials=pika.PlainCredentials(
            unquote(parts.username or "guest"), unquote(parts.password or "guest")
        ),
        connection_attempts=1,
        socket_timeout=timeout,
        stack_timeout=timeout,
        blocked_connection_timeout=max(timeout, 30.0),
        client_properties={
            "connection_name": f"integration_events {role} {socket.gethostname()}:{os.getpid()}"
        },
        **kwargs,
    )


def safe(url: str) -> str:
    """``url`` without its password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)


def unavailable(url: str, exc: BaseException) -> BrokerUnavailable:
    return BrokerUnavailable(
        f"cannot connect to the broker at {safe(url)}: {describe(exc)}. Back off and "
        "connect again; check that RabbitMQ runs and the URL's host, port, user and "
        "virtual host are right."
    )


def lost(what: str, exc: BaseException | str, results: Any = ()) -> BrokerConnectionLost:
    reason = exc if isinstance(exc, str) else describe(exc)
    return BrokerConnectionLost(
        f"connection to the broker lost while {what}: {reason}. Back off and connect again.",
        results,
    )


def describe(exc: BaseException) -> str:
    text = str(exc) or repr(exc)
    return f"{type(exc).__name__}: {text}"


def is_connection_error(exc: BaseException) -> bool:
    """Errors that mean "the broker went away", as opposed to programming errors."""
    return isinstance(exc, pika.exceptions.AMQPError | OSError)


def declare_topology(channel: Any, config: BridgeConfig) -> None:
    """Declare the durable topic exchange, this service's queue (with CAP's arguments) and
    a binding per RECEIVE pattern, on a pika BlockingChannel.

    Raises TopologyConflict when the broker refuses (406): an exchange or queue of that
    name exists with other properties.
    """
    try:
        channel.exchange_declare(
            exchange=config.exchange, exchange_type=EXCHANGE_TYPE, durable=True
        )
    except pika.exceptions.ChannelClosedByBroker as exc:
        raise _conflict(exc, f"exchange {config.exchange!r}",
                        "it must be a durable topic exchange, as CAP declares it") from exc
    if not config.queue:
        return
    arguments = config.queue_declare_arguments()
    try:
        channel.queue_declare(
            queue=config.queue, durable=True, exclusive=False, auto_delete=False,
            arguments=arguments,
        )
    except pika.exceptions.ChannelClosedByBroker as exc:
        raise _conflict(
            exc, f"queue {config.queue!r}",
            f"this bridge declares it durable with arguments {arguments}: set "
            "QUEUE_MESSAGE_TTL / QUEUE_ARGUMENTS / DEAD_LETTER_EXCHANGE to what it was "
            "declared with (CAP: x-message-ttl 864000000 unless configured), or delete the "
            f"queue (rabbitmqctl delete_queue {config.queue}) if nothing in it is needed",
        ) from exc
    for pattern in config.receive:
        channel.queue_bind(queue=config.queue, exchange=config.exchange, routing_key=pattern)


def _conflict(exc: pika.exceptions.ChannelClosedByBroker, what: str,
              fix: str) -> TopologyConflict:
    if exc.reply_code == PRECONDITION_FAILED:
        return TopologyConflict(f"the broker refused to declare {what}: "
                                f"{exc.reply_text}; {fix}.")
    return TopologyConflict(f"the broker refused to declare {what}: {describe(exc)}.")
