"""Publishing batches with publisher confirms and mandatory routing.

pika's BlockingChannel waits for each message's confirm before sending the next, one
round trip (and one broker fsync) per message. To send a batch and then await its
confirms together, this publisher drives pika's asynchronous SelectConnection from the
calling thread: publish everything, run the connection's I/O loop until every message is
acked, nacked or returned (or the connection goes, or CONFIRM_TIMEOUT passes), and stop.
Not thread-safe: one publisher per thread.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import pika
import pika.exceptions
import pika.spec

from . import frames, wire
from .amqp import EXCHANGE_TYPE, PRECONDITION_FAILED, connection_parameters, describe, lost, safe
from .codec import OutboundMessage
from .errors import BrokerUnavailable, TopologyConflict

if TYPE_CHECKING:
    from .config import BridgeConfig

logger = logging.getLogger("integration_events")


class PublishOutcome(StrEnum):
    """What became of one published message."""

    CONFIRMED = "confirmed"
    """The broker took it: routed to at least one queue (and written, if persistent)."""
    RETURNED = "returned"
    """Unroutable: no queue is bound for its routing key (mandatory=True). A failed attempt."""
    NACKED = "nacked"
    """The broker could not take it (an internal error). A failed attempt."""
    CONNECTION_LOST = "connection-lost"
    """The connection closed before its confirm came: unknown, send it again."""
    TIMED_OUT = "timed-out"
    """No confirm within CONFIRM_TIMEOUT: unknown, send it again."""


@dataclass(frozen=True)
class PublishResult:
    """The outcome of one message of a batch, in the batch's order."""

    wire_id: str
    outcome: PublishOutcome
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome is PublishOutcome.CONFIRMED


class _BatchedConnection(pika.SelectConnection):
    """A SelectConnection that can hold its output while a batch is published, then write
    it at once: pika hands each frame (three per message) to the socket in its own send
    call; one write per batch saves two thirds of the system calls and the broker's reads.
    Only frames are held, in order; nothing is sent while the I/O loop is not running."""

    _held: list[bytes] | None = None

    def hold_output(self) -> None:
        self._held = []

    def release_output(self) -> None:
        held, self._held = self._held, None
        if held and getattr(self, "_transport", None) is not None:
            super()._adapter_emit_data(b"".join(held))

    def _adapter_emit_data(self, data: bytes) -> None:
        if self._held is not None:
            self._held.append(data)
        else:
            super()._adapter_emit_data(data)


class AmqpPublisher:
    """Publishes CAP-format messages to one topic exchange, a batch at a time."""

    def __init__(self, url: str, exchange: str, *, name: str = "bridge",
                 connect_timeout: float = 10.0, confirm_timeout: float = 30.0) -> None:
        self.url = url
        self.exchange = exchange
        self.name = name
        self.connect_timeout = connect_timeout
        self.confirm_timeout = confirm_timeout
        self._conn: Any = None
        self._channel: Any = None
        self._ready = False
        self._closed = True
        self._error = ""
        self._refusal: tuple[int, str] | None = None
        self._stop_when: Callable[[], bool] | None = None
        self._next_tag = 0
        self._pending: dict[int, int] = {}
        self._outcomes: list[PublishOutcome | None] = []
        self._details: list[str] = []
        self._returned: dict[int, str] = {}
        self._by_wire_id: dict[str, list[int]] = {}
        self._exchange_name = frames.short_string(exchange)
        self._short_strings: dict[str, bytes] = {}

    @classmethod
    def for_bridge(cls, config: BridgeConfig) -> AmqpPublisher:
        return cls(config.url, config.exchange, name=config.name,
                   connect_timeout=config.connect_timeout,
                   confirm_timeout=config.confirm_timeout)

    def __enter__(self) -> AmqpPublisher:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def is_open(self) -> bool:
        return self._conn is not None and not self._closed and self._ready

    def connect(self) -> None:
        """Open the connection and a confirming channel, and declare the exchange.

        Raises BrokerUnavailable (back off and try again) or TopologyConflict.
        """
        self._teardown()
        self._closed, self._ready, self._error, self._refusal = False, False, "", None
        params = connection_parameters(
            self.url, timeout=self.connect_timeout, role=f"bridge {self.name} publisher"
        )
        try:
            self._conn = _BatchedConnection(
                params, on_open_callback=self._on_open,
                on_open_error_callback=self._on_open_error, on_close_callback=self._on_close,
            )
        except (pika.exceptions.AMQPError, OSError) as exc:
            self._conn = None
            raise BrokerUnavailable(f"cannot connect to {safe(self.url)}: {describe(exc)}"
                                    ) from exc
        self._run(lambda: self._ready, self.connect_timeout + 1.0)
        if self._ready:
            logger.info("bridge connected bridge=%s role=publisher url=%s exchange=%s",
                        self.name, safe(self.url), self.exchange)
            return
        error = self._error or f"no answer within {self.connect_timeout}s"
        refusal = self._refusal
        self._teardown()
        if refusal and refusal[0] == PRECONDITION_FAILED:
            raise TopologyConflict(
                f"the broker refused to declare exchange {self.exchange!r}: {refusal[1]}; it "
                "must be a durable topic exchange, as CAP declares it."
            )
        raise BrokerUnavailable(
            f"cannot connect to the broker at {safe(self.url)}: {error}. Back off and "
            "connect again; check that RabbitMQ runs and the URL is right."
        )

    def publish_batch(self, messages: Sequence[OutboundMessage], *,
                      sent: Callable[[], None] | None = None) -> list[PublishResult]:
        """Publish ``messages`` (persistent, mandatory) and wait for their confirms.

        ``sent``: called once the messages are written to the socket, before waiting for
        the confirms (other work overlaps the broker's; if it raises, the connection is
        dropped, as its confirms would be stale).

        Returns one result per message, in order. Raises BrokerConnectionLost, carrying
        those results (the confirmed ones reached the broker), when the connection or
        channel closes or confirms stop coming before every message is settled; and
        BrokerUnavailable when it is not connected and cannot connect.
        """
        if not messages:
            return []
        self._ensure_open()
        self._start_batch(messages)
        self._conn.hold_output()
        try:
            for index, message in enumerate(messages):
                try:
                    self._publish_one(message)
                except (pika.exceptions.AMQPError, OSError) as exc:
                    self._closed = True
                    self._error = self._error or describe(exc)
                    for rest in range(index, len(messages)):
                        self._settle(rest, PublishOutcome.CONNECTION_LOST, self._error)
                    break
                self._next_tag += 1
                self._pending[self._next_tag] = index
        finally:
            self._conn.release_output()
        if sent is not None and not self._closed:
            self._pump()  # the frames to the socket now, not when the wait starts
            try:
                sent()
            except BaseException:
                self._teardown()
                raise
        settled = self._run(lambda: not self._pending, self.confirm_timeout)
        if self._closed or not settled:
            reason = self._error if self._closed else (
                f"no confirm within CONFIRM_TIMEOUT={self.confirm_timeout}s")
            outcome = (PublishOutcome.CONNECTION_LOST if self._closed
                       else PublishOutcome.TIMED_OUT)
            for index in list(self._pending.values()):
                self._settle(index, outcome, reason)
            self._pending.clear()
            results = self._results(messages)
            self._teardown()
            raise lost(f"publishing to {self.exchange!r}", reason, results)
        return self._results(messages)

    def _publish_one(self, message: OutboundMessage) -> None:
        """Write one message's frames (held until the batch is written, see
        _BatchedConnection): built by frames.publish_frames, not by pika's generic
        marshalling, which costs as much CPU per message as the rest of sending."""
        channel, conn = self._channel, self._conn
        if not channel.is_open or not conn.is_open:
            raise pika.exceptions.ChannelWrongStateError("Channel is closed.")
        content_type = self._short_strings.get(message.content_type)
        if content_type is None:
            content_type = self._short_strings[message.content_type] = frames.short_string(
                message.content_type)
        data = frames.publish_frames(
            channel.channel_number, self._exchange_name, message.routing_key, message.body,
            content_type=content_type, headers=message.headers,
            delivery_mode=message.delivery_mode, frame_max=conn.params.frame_max)
        conn.bytes_sent += len(data)
        conn.frames_sent += 2 + -(-len(message.body) // (conn.params.frame_max
                                                         - frames.FRAME_OVERHEAD))
        conn._adapter_emit_data(data)

    def close(self) -> None:
        """Close the connection (idempotent)."""
        self._teardown()

    # -- batch bookkeeping ------------------------------------------------------------

    def _start_batch(self, messages: Sequence[OutboundMessage]) -> None:
        self._pending = {}
        self._outcomes = [None] * len(messages)
        self._details = [""] * len(messages)
        self._returned = {}
        self._by_wire_id = {}
        for index, message in enumerate(messages):
            self._by_wire_id.setdefault(message.wire_id, []).append(index)

    def _settle(self, index: int, outcome: PublishOutcome, detail: str = "") -> None:
        if self._outcomes[index] is None:
            self._outcomes[index] = outcome
            self._details[index] = detail

    def _results(self, messages: Sequence[OutboundMessage]) -> list[PublishResult]:
        return [
            PublishResult(m.wire_id, self._outcomes[i] or PublishOutcome.CONNECTION_LOST,
                          self._details[i])
            for i, m in enumerate(messages)
        ]

    # -- the I/O loop -----------------------------------------------------------------

    def _ensure_open(self) -> None:
        if self._conn is None:
            raise BrokerUnavailable(
                f"publisher for {safe(self.url)} is not connected: call connect()")
        self._pump()
        if self._closed or not self._ready:
            # Dropped while idle (e.g. a missed heartbeat): nothing is in flight, so
            # reconnecting is safe. Raises BrokerUnavailable when the broker is gone.
            logger.info("bridge reconnecting bridge=%s role=publisher reason=%s",
                        self.name, self._error or "closed")
            self.connect()

    def _pump(self) -> None:
        """Handle whatever the broker sent while no batch was running."""
        ioloop = self._conn.ioloop
        ioloop.call_later(0, ioloop.stop)
        ioloop.start()

    def _run(self, until: Callable[[], bool], timeout: float) -> bool:
        if until() or self._closed or self._conn is None:
            return until()
        ioloop = self._conn.ioloop
        self._stop_when = until
        timer = ioloop.call_later(timeout, ioloop.stop)
        try:
            ioloop.start()
        finally:
            ioloop.remove_timeout(timer)
            self._stop_when = None
        return until()

    def _poke(self) -> None:
        if self._stop_when is not None and (self._closed or self._stop_when()):
            self._conn.ioloop.stop()

    def _teardown(self) -> None:
        conn, self._conn = self._conn, None
        self._ready = False
        if conn is None:
            return
        try:
            if conn.is_open:
                conn.close()
                self._conn = conn
                self._run(lambda: self._closed, 5.0)
                self._conn = None
        except pika.exceptions.AMQPError:  # already closing
            pass
        finally:
            self._closed = True
            conn.ioloop.close()

    # -- pika callbacks (run inside the I/O loop) -------------------------------------

    def _on_open(self, conn: Any) -> None:
        conn.channel(on_open_callback=self._on_channel_open)

    def _on_open_error(self, conn: Any, error: BaseException) -> None:
        self._closed = True
        self._error = describe(error)
        self._poke()

    def _on_close(self, conn: Any, reason: BaseException) -> None:
        self._closed = True
        self._ready = False
        self._error = self._error or describe(reason)
        self._poke()

    def _on_channel_open(self, channel: Any) -> None:
        self._channel = channel
        self._next_tag = 0
        channel.add_on_close_callback(self._on_channel_closed)
        channel.add_on_return_callback(self._on_return)
        channel.confirm_delivery(ack_nack_callback=self._on_confirm,
                                 callback=self._on_select_ok)

    def _on_select_ok(self, frame: Any) -> None:
        self._channel.exchange_declare(
            exchange=self.exchange, exchange_type=EXCHANGE_TYPE, durable=True,
            callback=self._on_declared,
        )

    def _on_declared(self, frame: Any) -> None:
        self._ready = True
        self._poke()

    def _on_channel_closed(self, channel: Any, reason: BaseException) -> None:
        # A closed channel ends this publisher's usefulness: close the connection too.
        self._ready = False
        self._closed = True
        self._error = self._error or describe(reason)
        if isinstance(reason, pika.exceptions.ChannelClosedByBroker):
            self._refusal = (reason.reply_code, reason.reply_text)
        if self._conn is not None and self._conn.is_open:
            self._conn.close()
        self._poke()

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        acked = isinstance(method, pika.spec.Basic.Ack)
        tags = ([t for t in self._pending if t <= method.delivery_tag] if method.multiple
                else [method.delivery_tag])
        for tag in tags:
            index = self._pending.pop(tag, None)
            if index is None:
                continue  # a late confirm of an earlier, abandoned batch
            if not acked:
                self._settle(index, PublishOutcome.NACKED, "nacked by the broker")
            elif index in self._returned:
                self._settle(index, PublishOutcome.RETURNED, self._returned[index])
            else:
                self._settle(index, PublishOutcome.CONFIRMED)
        self._poke()

    def _on_return(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        # The broker sends basic.return before the basic.ack of the same message.
        wire_id = (properties.headers or {}).get(wire.MSG_ID)
        if isinstance(wire_id, bytes):
            wire_id = wire_id.decode("utf-8", "replace")
        pending = set(self._pending.values())
        for index in self._by_wire_id.get(str(wire_id), []):
            if index in pending and index not in self._returned:
                self._returned[index] = (
                    f"returned {method.reply_code} {method.reply_text}: no queue is bound "
                    f"for routing key {method.routing_key!r} on {method.exchange!r}"
                )
                break
