"""The wire codec: our messages to CAP-format AMQP messages and back.

``encode_message`` turns a stored message (topic, id, JSON content, headers) into the
routing key, headers (all strings) and body CAP's RabbitMQ transport produces.
``decode_delivery`` turns a raw delivery into an ``InboundMessage`` or, for input that can
never be processed, a ``Rejection`` with a reason and a size-capped copy of the body. No
broker library is imported here.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

from django.utils import timezone

from . import wire
from .errors import WireEncodingError
from .inbound import Delivery, Rejection, RejectReason, read_headers
from .naming import Naming, from_wire_json, to_wire_json

__all__ = [
    "Delivery",
    "InboundMessage",
    "OutboundMessage",
    "RejectReason",
    "Rejection",
    "decode_delivery",
    "encode_message",
]

CONTENT_TYPE = "application/json"
PERSISTENT = 2
# Our header names that travel as CAP headers (or not at all) instead of under their names.
LOCAL_ONLY = frozenset({
    "message-id", "topic", "group", "sent-at", "correlation-id", "correlation-sequence",
    "exception", "bridge",
})
# Set on a message the consumer stored: the bridge it came in over.
BRIDGE_HEADER = "bridge"


@dataclass(frozen=True)
class OutboundMessage:
    """One AMQP message in CAP's format, ready to publish (persistent, to the bridge's
    topic exchange, routing key = topic)."""

    wire_id: str
    routing_key: str
    headers: dict[str, str]
    body: bytes
    content_type: str = CONTENT_TYPE
    delivery_mode: int = PERSISTENT


@dataclass(frozen=True)
class InboundMessage:
    """A received message, ready to store: ``content`` is local JSON (names in snake_case)
    and ``headers`` are local headers plus every wire header as it came."""

    bridge: str
    wire_id: str
    topic: str
    content: str
    headers: dict[str, Any]
    correlation_id: uuid.UUID
    correlation_sequence: int
    sent_at: datetime | None
    type_name: str | None = None
    redelivered: bool = False
    delivery_tag: int = 0


def encode_message(
    *,
    topic: str,
    message_id: uuid.UUID | str,
    content: str,
    headers: Mapping[str, Any] | None,
    naming: Naming,
    type_name: str | None = None,
    now: datetime | None = None,
    max_body_bytes: int | None = None,
) -> OutboundMessage:
    """The CAP-format AMQP message for one stored message.

    ``headers`` are the message's headers (docs/headers.md), with ``correlation-id`` and
    ``correlation-sequence``. A message that came in over a bridge (its ``bridge`` header
    is set) goes out again with its original ``cap-*`` values, so every service sees the
    same wire id; any other message's wire id is its own id. The original ``cap-corr-id``
    is re-emitted when the local correlation id was derived from it.
    Raises WireEncodingError for content that is not JSON or a body over the limit.
    """
    headers = dict(headers or {})
    forwarded = bool(headers.get(BRIDGE_HEADER)) and bool(headers.get(wire.MSG_ID))
    try:
        json.loads(content)
    except ValueError as exc:
        raise WireEncodingError(f"content of {topic} {message_id} is not JSON: {exc}") from exc
    body = to_wire_json(content, naming).encode()
    if max_body_bytes is not None and len(body) > max_body_bytes:
        raise WireEncodingError(
            f"{topic} {message_id}: body of {len(body)} bytes is over the limit of "
            f"{max_body_bytes} (MAX_BODY_BYTES)"
        )
    out: dict[str, str] = {}
    for key, value in headers.items():
        if key in LOCAL_ONLY or key in wire.CONSUMER_ONLY or value is None:
            continue
        if key.startswith("cap-") and not forwarded:
            continue
        if isinstance(value, str):
            out[key] = value
        else:  # a number as its JSON text (str() is that for an int, and faster)
            out[key] = str(value) if type(value) is int else json.dumps(value)
    wire_id = str(headers[wire.MSG_ID]) if forwarded else str(message_id)
    out[wire.MSG_ID] = wire_id
    out[wire.MSG_NAME] = topic
    out[wire.MSG_TYPE] = str(out.get(wire.MSG_TYPE) or type_name or topic)
    out[wire.CORR_ID] = _wire_correlation(headers, wire_id)
    out[wire.CORR_SEQ] = str(int(headers.get("correlation-sequence") or 0))
    if not (forwarded and out.get(wire.SENT_TIME)):
        out[wire.SENT_TIME] = wire.format_sent_time(_sent_at(headers, now))
    for name in (topic, *out):
        if len(name) > 63 and len(name.encode()) > 255:  # 63 characters are <= 252 bytes
            raise WireEncodingError(
                f"{topic[:60]} {message_id}: {name[:60]!r}... is over 255 bytes as UTF-8; AMQP "
                "carries routing keys and header names as short strings. Shorten it.")
    return OutboundMessage(wire_id=wire_id, routing_key=topic, headers=out, body=body)


def _wire_correlation(headers: Mapping[str, Any], wire_id: str) -> str:
    local = headers.get("correlation-id")
    original = headers.get(wire.CORR_ID)
    if local is None:
        return str(original or wire_id)
    if isinstance(original, str) and str(wire.correlation_uuid(original)) == str(local):
        return original
    return str(local)


def _sent_at(headers: Mapping[str, Any], now: datetime | None) -> datetime:
    value = headers.get("sent-at")
    if isinstance(value, str):
        parsed = wire.parse_sent_time(value)
        if parsed is not None:
            return parsed
    return now or timezone.now()


def decode_delivery(
    delivery: Delivery,
    *,
    bridge: str,
    naming: Naming,
    max_body_bytes: int,
    now: datetime | None = None,
) -> InboundMessage | Rejection:
    """Read one delivery: an InboundMessage, or a Rejection saying why it never can be."""
    read = read_headers(delivery, bridge=bridge, max_body_bytes=max_body_bytes)
    if isinstance(read, Rejection):
        return read
    headers, wire_id, topic, sequence = read.headers, read.wire_id, read.topic, read.sequence
    try:
        text = delivery.body.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        return read.reject(RejectReason.NOT_UTF8, f"body is not UTF-8: {exc}")
    if not text.strip():
        # CAP sends a null value as an empty body.
        text = "null"
    try:
        json.loads(text, parse_constant=_no_constants)
    except ValueError as exc:
        return read.reject(RejectReason.NOT_JSON, f"body is not JSON: {exc}")
    corr_wire = headers.get(wire.CORR_ID)
    correlation = wire.correlation_uuid(corr_wire if isinstance(corr_wire, str) else wire_id)
    sent_text = headers.get(wire.SENT_TIME)
    sent_at = None
    if isinstance(sent_text, str):
        sent_at = _sent_time(sent_text) if now is None else wire.parse_sent_time(sent_text,
                                                                                   now=now)
    local = {
        **headers,
        BRIDGE_HEADER: bridge,
        "correlation-id": str(correlation),
        "correlation-sequence": sequence,
    }
    if sent_at is not None:
        local["sent-at"] = sent_at.isoformat()
    return InboundMessage(
        bridge=bridge,
        wire_id=wire_id,
        topic=topic,
        content=from_wire_json(text, naming),
        headers=local,
        correlation_id=correlation,
        correlation_sequence=sequence,
        sent_at=sent_at,
        type_name=headers.get(wire.MSG_TYPE) or None,
        redelivered=delivery.redelivered,
        delivery_tag=delivery.delivery_tag,
    )


@lru_cache(maxsize=1024)
def _sent_time(text: str) -> datetime | None:
    """parse_sent_time, once per text: a batch's messages share a handful of seconds."""
    return wire.parse_sent_time(text)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
