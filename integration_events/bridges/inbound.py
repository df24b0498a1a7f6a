"""Raw deliveries, the reasons a delivery is rejected, and reading CAP's headers.

A delivery is rejected only for what can never be processed; each rejection carries what
is needed to store it (size-capped) and show it with its reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from . import wire

# How much of a rejected body is kept for storing and showing.
RAW_COPY_BYTES = 64 * 1024
# The longest wire id and topic a message can be stored with (PublishedMessage's columns).
MAX_KEY_LENGTH = 255
_JSON_TYPES = ("application/json", "text/json")
_TEXT_ENCODINGS = ("utf-8", "utf8", "identity")


@dataclass(frozen=True)
class Delivery:
    """One message as the broker delivered it (independent of the client library)."""

    delivery_tag: int
    routing_key: str
    body: bytes
    headers: Mapping[str, Any] | None = None
    content_type: str | None = None
    content_encoding: str | None = None
    redelivered: bool = False
    exchange: str = ""


class RejectReason(StrEnum):
    """Why a delivery can never be processed."""

    NOT_UTF8 = "not-utf8"
    """The body is not UTF-8 text."""
    NOT_JSON = "not-json"
    """The body is not JSON."""
    MISSING_ID = "missing-id"
    """No ``cap-msg-id`` header: nothing to de-duplicate on."""
    MISSING_TOPIC = "missing-topic"
    """No ``cap-msg-name`` header: the topic is unknown."""
    TOO_LARGE = "too-large"
    """The body is over the bridge's MAX_BODY_BYTES."""
    NUL_BYTES = "nul-bytes"
    """Raw NUL bytes in the body or a header (PostgreSQL text cannot hold them)."""
    WRONG_CONTENT_TYPE = "wrong-content-type"
    """A content type or encoding that is not JSON text."""
    BROKEN_HEADERS = "broken-headers"
    """A header that cannot be read (not UTF-8, an id that is not a string, a
    ``cap-corr-seq`` that is not a non-negative integer)."""


@dataclass(frozen=True)
class Rejection:
    """A delivery that can never be processed, with what is needed to store and show it.

    ``headers`` are storable (strings, or JSON values); ``raw_body`` is at most
    RAW_COPY_BYTES of the body and ``preview`` the same as text a database can hold (NUL
    and invalid UTF-8 written as escapes).
    """

    bridge: str
    reason: RejectReason
    detail: str
    wire_id: str | None
    topic: str | None
    headers: dict[str, Any]
    body_size: int
    raw_body: bytes
    preview: str
    delivery_tag: int = 0
    redelivered: bool = False

    def describe(self) -> str:
        """One line for logs and the stored reason."""
        return f"rejected ({self.reason}): {self.detail}"


@dataclass
class HeaderView:
    """The readable headers of a delivery, and how to reject it."""

    delivery: Delivery
    bridge: str
    headers: dict[str, Any] = field(default_factory=dict)
    wire_id: str = ""
    topic: str = ""
    sequence: int = 0

    def reject(self, reason: RejectReason, detail: str) -> Rejection:
        body = self.delivery.body
        raw = body[:RAW_COPY_BYTES]
        return Rejection(
            bridge=self.bridge,
            reason=reason,
            detail=detail,
            wire_id=self.wire_id or None,
            topic=self.topic or None,
            headers=self.headers,
            body_size=len(body),
            raw_body=raw,
            preview=storable_text(raw),
            delivery_tag=self.delivery.delivery_tag,
            redelivered=self.delivery.redelivered,
        )


def storable_text(raw: bytes) -> str:
    """``raw`` as text any database column holds: invalid UTF-8 and NUL as escapes."""
    return raw.decode("utf-8", errors="backslashreplace").replace("\x00", "\\x00")


class _BrokenHeader(ValueError):
    pass


def _value(key: str, value: Any) -> Any:
    """A header value as CAP's consumer reads it (byte arrays as UTF-8 text), JSON-safe."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bytes | bytearray):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _BrokenHeader(f"header {key!r} is not UTF-8: {exc}") from exc
    if isinstance(value, bool | int | float | Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): _value(f"{key}.{k}", v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_value(key, v) for v in value]
    return str(value)


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def read_headers(delivery: Delivery, *, bridge: str, max_body_bytes: int,
                 ) -> HeaderView | Rejection:
    """Read and check the headers and the body's framing (size, type, NUL bytes); the
    body's text and JSON are checked by the codec."""
    view = HeaderView(delivery=delivery, bridge=bridge)
    raw = delivery.headers or {}
    broken = None
    for key, value in raw.items():
        try:
            view.headers[str(key)] = _value(str(key), value)
        except _BrokenHeader as exc:
            view.headers[str(key)] = repr(value)[:200]
            broken = broken or str(exc)
    if _has_nul(view.headers):
        clean = {k: storable_text(str(v).encode()) for k, v in view.headers.items()}
        view.headers = clean
        return view.reject(RejectReason.NUL_BYTES, "a header holds a NUL character")
    wire_id, topic = view.headers.get(wire.MSG_ID), view.headers.get(wire.MSG_NAME)
    view.wire_id = wire_id if isinstance(wire_id, str) else ""
    view.topic = topic if isinstance(topic, str) else ""
    if broken:
        return view.reject(RejectReason.BROKEN_HEADERS, broken)
    for key in (wire.MSG_ID, wire.MSG_NAME, wire.CORR_ID):
        if isinstance(view.headers.get(key), dict | list):
            return view.reject(RejectReason.BROKEN_HEADERS, f"header {key!r} is not a string")
    if not view.wire_id.strip():
        return view.reject(RejectReason.MISSING_ID, f"no {wire.MSG_ID!r} header")
    if not view.topic.strip():
        return view.reject(RejectReason.MISSING_TOPIC, f"no {wire.MSG_NAME!r} header")
    for key, value in ((wire.MSG_ID, view.wire_id), (wire.MSG_NAME, view.topic)):
        if len(value) > MAX_KEY_LENGTH:
            return view.reject(RejectReason.BROKEN_HEADERS,
                               f"header {key!r} is {len(value)} characters long, over "
                               f"{MAX_KEY_LENGTH} (the stored column's size)")
    seq = view.headers.get(wire.CORR_SEQ)
    if seq is not None:
        text = str(seq).strip()
        if not text.isascii() or not text.isdigit():
            return view.reject(
                RejectReason.BROKEN_HEADERS,
                f"header {wire.CORR_SEQ!r} is {seq!r}, not a non-negative integer",
            )
        view.sequence = int(text)
    return _check_body(view, max_body_bytes)


def _check_body(view: HeaderView, max_body_bytes: int) -> HeaderView | Rejection:
    delivery = view.delivery
    if len(delivery.body) > max_body_bytes:
        return view.reject(
            RejectReason.TOO_LARGE,
            f"body of {len(delivery.body)} bytes is over MAX_BODY_BYTES={max_body_bytes}",
        )
    problem = content_type_problem(delivery.content_type, delivery.content_encoding)
    if problem:
        return view.reject(RejectReason.WRONG_CONTENT_TYPE, problem)
    if b"\x00" in delivery.body:
        return view.reject(
            RejectReason.NUL_BYTES, f"body holds a NUL byte at {delivery.body.index(0)}"
        )
    return view


def content_type_problem(content_type: str | None, content_encoding: str | None) -> str | None:
    """Why a content type/encoding is not JSON text (None: fine; CAP sets neither)."""
    if content_type:
        mime, _, params = content_type.partition(";")
        mime = mime.strip().lower()
        if mime not in _JSON_TYPES and not mime.endswith("+json"):
            return f"content type {content_type!r} is not JSON"
        for param in params.split(";"):
            name, _, value = param.partition("=")
            if name.strip().lower() == "charset" and \
                    value.strip().strip('"').lower() not in _TEXT_ENCODINGS:
                return f"content type {content_type!r} is not UTF-8"
    if content_encoding and content_encoding.strip().lower() not in _TEXT_ENCODINGS:
        return f"content encoding {content_encoding!r} is not plain UTF-8 text"
    return None
