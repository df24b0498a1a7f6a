"""Consuming this service's queue: prefetch, batches, ack with multiple=True, reject.

A pika BlockingConnection with one channel. ``fetch`` returns up to a batch of deliveries
(waiting at most ``idle_timeout`` for the first and ``max_wait`` for the rest), the
caller stores them and commits, then ``ack_through(last_tag)`` acknowledges the batch in
one frame. ``reject`` nacks one delivery without requeueing: the broker dead-letters it
when the queue has a dead-letter exchange (DEAD_LETTER_EXCHANGE) and drops it otherwise.
Unacknowledged deliveries go back to the queue when the connection closes. Not
thread-safe.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

import pika
import pika.exceptions

from .amqp import connection_parameters, declare_topology, is_connection_error, lost, safe
from .amqp import unavailable as unavailable_error
from .config import BridgeConfig
from .errors import BrokerConnectionLost, BrokerUnavailable, TopologyConflict
from .inbound import Delivery

logger = logging.getLogger("integration_events")
# How often an idle fetch looks at its stop flag (SIGTERM ends an idle consumer this soon).
STOP_CHECK = 0.1


class AmqpConsumer:
    """Consumes the bridge's QUEUE (declaring the exchange, queue and bindings first)."""

    def __init__(self, config: BridgeConfig, *, declare: bool = True) -> None:
        if not config.queue:
            raise ValueError(f"bridge {config.name!r} has no QUEUE to consume")
        self.config = config
        self.queue: str = config.queue
        self.declare = declare
        self._conn: Any = None
        self._channel: Any = None
        self._buffer: deque[Delivery] = deque()

    def __enter__(self) -> AmqpConsumer:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def is_open(self) -> bool:
        return self._channel is not None and self._channel.is_open

    def connect(self) -> None:
        """Connect, set the prefetch, declare the topology and start consuming.

        Raises BrokerUnavailable (back off and try again) or TopologyConflict.
        """
        self.close()
        config = self.config
        params = connection_parameters(
            config.url, timeout=config.connect_timeout, role=f"bridge {config.name} consumer"
        )
        try:
            self._conn = pika.BlockingConnection(params)
        except (pika.exceptions.AMQPError, OSError) as exc:
            raise unavailable_error(config.url, exc) from exc
        try:
            self._channel = self._conn.channel()
            self._channel.basic_qos(prefetch_count=config.prefetch)
            if self.declare:
                declare_topology(self._channel, config)
            self._channel.basic_consume(self.queue, self._on_message, auto_ack=False)
        except TopologyConflict:
            self.close()
            raise
        except (pika.exceptions.AMQPError, OSError) as exc:
            self.close()
            raise unavailable_error(config.url, exc) from exc
        logger.info("bridge connected bridge=%s role=consumer url=%s queue=%s prefetch=%s",
                    config.name, safe(config.url), self.queue, config.prefetch)

    def fetch(self, *, max_messages: int | None = None, max_wait: float = 0.05,
              idle_timeout: float = 1.0, stop: threading.Event | None = None
              ) -> list[Delivery]:
        """The next deliveries, at most ``max_messages`` (default: PREFETCH).

        Waits up to ``idle_timeout`` seconds for the first (returning [] if none comes, so
        the caller can look at signals and heartbeats; or as soon as ``stop`` is set, which
        it looks at every STOP_CHECK seconds), then up to ``max_wait`` more for the batch
        to fill. Raises BrokerConnectionLost when the connection goes.
        """
        limit = max_messages or self.config.prefetch
        self._require_open()
        try:
            deadline = time.monotonic() + idle_timeout
            while not self._buffer:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (stop is not None and stop.is_set()):
                    return []
                self._conn.process_data_events(
                    time_limit=remaining if stop is None else min(remaining, STOP_CHECK))
            deadline = time.monotonic() + max_wait
            while len(self._buffer) < limit:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._conn.process_data_events(time_limit=remaining)
        except Exception as exc:
            if not is_connection_error(exc):
                raise
            raise self._lost("waiting for deliveries", exc) from exc
        return [self._buffer.popleft() for _ in range(min(limit, len(self._buffer)))]

    def batches(self, *, max_messages: int | None = None, max_wait: float = 0.05,
                idle_timeout: float = 1.0, stop: threading.Event | None = None
                ) -> Iterator[list[Delivery]]:
        """``fetch`` in a loop until ``stop`` is set: yields each batch, and [] after each
        idle ``idle_timeout``."""
        while stop is None or not stop.is_set():
            yield self.fetch(max_messages=max_messages, max_wait=max_wait,
                             idle_timeout=idle_timeout, stop=stop)

    def ack_through(self, delivery_tag: int) -> None:
        """Acknowledge every unsettled delivery up to and including ``delivery_tag``."""
        self._require_open()
        try:
            self._channel.basic_ack(delivery_tag=delivery_tag, multiple=True)
        except Exception as exc:
            if not is_connection_error(exc):
                raise
            raise self._lost("acknowledging", exc) from exc

    def reject(self, delivery_tag: int) -> None:
        """Reject one delivery without requeueing (to the dead-letter exchange, if the
        queue has one). Reject before acknowledging a later tag with ``ack_through``."""
        self._require_open()
        try:
            self._channel.basic_nack(delivery_tag=delivery_tag, multiple=False, requeue=False)
        except Exception as exc:
            if not is_connection_error(exc):
                raise
            raise self._lost("rejecting", exc) from exc

    def close(self) -> None:
        """Close the connection (idempotent); unacknowledged deliveries are requeued."""
        conn, self._conn, self._channel = self._conn, None, None
        self._buffer.clear()
        if conn is not None and conn.is_open:
            try:
                conn.close()
            except Exception:  # already going: nothing left to close
                logger.debug("bridge consumer close failed bridge=%s", self.config.name,
                             exc_info=True)

    def _require_open(self) -> None:
        if not self.is_open:
            raise BrokerUnavailable(
                f"consumer of {self.queue!r} at {safe(self.config.url)} is not connected: "
                "call connect()")

    def _lost(self, what: str, exc: BaseException) -> BrokerConnectionLost:
        self.close()
        return lost(f"{what} on queue {self.queue!r}", exc)

    def _on_message(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        self._buffer.append(Delivery(
            delivery_tag=method.delivery_tag,
            routing_key=method.routing_key,
            body=body,
            headers=properties.headers,
            content_type=properties.content_type,
            content_encoding=properties.content_encoding,
            redelivered=method.redelivered,
            exchange=method.exchange,
        ))
