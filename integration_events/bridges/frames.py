"""AMQP 0-9-1 frames of one ``basic.publish``, built in one pass.

pika builds a published message through generic objects (a method, a properties object, a
field table walked value by value, three frame objects), about as much CPU per message as
the rest of a bridge's sending together. A bridge always publishes the same shape: a
durable topic exchange, ``mandatory``, a content type, string headers, a delivery mode. This
module writes exactly those frames (the specification's sections 2.3.5 and 4.2.5, the
``basic`` class's property list in 1.8) and nothing else; tests/bridges/test_frames.py checks
them byte for byte against pika's own marshalling and against a real broker.

No broker library is imported here.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping

FRAME_METHOD, FRAME_HEADER, FRAME_BODY = 1, 2, 3
FRAME_END = b"\xce"
FRAME_OVERHEAD = 8  # type (1), channel (2), size (4) and the end octet
BASIC_CLASS, BASIC_PUBLISH = 60, 40
# Property flags of the basic class: bit 15 is the first property.
FLAG_CONTENT_TYPE = 1 << 15
FLAG_HEADERS = 1 << 13
FLAG_DELIVERY_MODE = 1 << 12
MANDATORY = 1

_frame_head = struct.Struct(">BHI").pack
_method_head = struct.Struct(">HHH").pack  # class, method, reserved-1 (ticket)
_content_head = struct.Struct(">HHQH").pack  # class, weight, body size, property flags
_long = struct.Struct(">I").pack
# Encoded header names, with the type octet of their string value.
_keys: dict[str, bytes] = {}


def short_string(value: str) -> bytes:
    """A short string: one length octet, then at most 255 octets of UTF-8."""
    data = value.encode()
    if len(data) > 255:
        raise ValueError(f"{value[:40]!r}... is longer than 255 bytes as UTF-8 (an AMQP "
                         "short string: exchange, routing key, content type, header name)")
    return bytes((len(data),)) + data


def string_table(table: Mapping[str, str]) -> bytes:
    """A field table whose values are all long strings (``S``), as CAP writes its headers."""
    parts: list[bytes] = []
    for key, value in table.items():
        prefix = _keys.get(key)
        if prefix is None:  # the same few header names on every message: encoded once
            prefix = short_string(key) + b"S"
            if len(_keys) < 1024:
                _keys[key] = prefix
        try:
            data = value.encode()
        except AttributeError:
            raise TypeError(f"header {key!r}: {type(value).__name__}, not str (a bridge "
                            "sends every header as a string, as CAP does)") from None
        parts += (prefix, _long(len(data)), data)
    joined = b"".join(parts)
    return _long(len(joined)) + joined


def publish_frames(channel: int, exchange: bytes, routing_key: str, body: bytes, *,
                   content_type: bytes, headers: Mapping[str, str], delivery_mode: int,
                   frame_max: int) -> bytes:
    """The method, content header and body frames of one mandatory ``basic.publish``.

    ``exchange`` and ``content_type`` are already short strings (``short_string``: they
    are the same for every message of a bridge). The body is cut into frames of at most
    ``frame_max`` octets, the size the connection negotiated.
    """
    method = (_method_head(BASIC_CLASS, BASIC_PUBLISH, 0) + exchange
              + short_string(routing_key) + bytes((MANDATORY,)))
    header = (_content_head(BASIC_CLASS, 0, len(body),
                            FLAG_CONTENT_TYPE | FLAG_HEADERS | FLAG_DELIVERY_MODE)
              + content_type + string_table(headers) + bytes((delivery_mode,)))
    out = [_frame_head(FRAME_METHOD, channel, len(method)), method, FRAME_END,
           _frame_head(FRAME_HEADER, channel, len(header)), header, FRAME_END]
    room = frame_max - FRAME_OVERHEAD
    for start in range(0, len(body), room):
        chunk = body[start:start + room]
        out += (_frame_head(FRAME_BODY, channel, len(chunk)), chunk, FRAME_END)
    return b"".join(out)
