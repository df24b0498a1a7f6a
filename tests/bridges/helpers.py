"""Shared by the bridge tests: CAP-format messages as CAP's RabbitMQ transport builds them
(string headers, PascalCase JSON body), as broker deliveries or sent with plain pika."""

from __future__ import annotations

import itertools
import json
from typing import Any

from integration_events.bridges.inbound import Delivery

_tags = itertools.count(1)


def cap_headers(wire_id: str, topic: str, **extra: Any) -> dict[str, Any]:
    """The headers CAP's publisher sets (src/DotNetCore.CAP/Internal/ICapPublisher.Default.cs)."""
    return {
        "cap-msg-id": wire_id, "cap-msg-name": topic, "cap-msg-type": "ProbeHappened",
        "cap-corr-id": wire_id, "cap-corr-seq": "0", "cap-callback-name": None,
        "cap-senttime": "5/16/2025 3:04:05 PM +08:00", **extra,
    }


def probe_body(n: int, behaviour: str = "ok", **more: Any) -> bytes:
    """A ProbeHappened as a .NET service serialises it (PascalCase names)."""
    return json.dumps({"N": n, "Behaviour": behaviour, **more}).encode()


def cap_delivery(wire_id: str, topic: str = "probe.probe-happened", body: bytes | None = None,
                 *, headers: dict[str, Any] | None = None, n: int = 0, **props: Any) -> Delivery:
    """One delivery as the broker hands it to the consumer."""
    return Delivery(
        delivery_tag=next(_tags), routing_key=topic,
        body=probe_body(n) if body is None else body,
        headers=cap_headers(wire_id, topic, **(headers or {})), **props,
    )


def cap_publish(channel: Any, exchange: str, wire_id: str, topic: str = "probe.probe-happened",
                body: bytes | None = None, *, headers: dict[str, Any] | None = None,
                n: int = 0, **props: Any) -> None:
    """Publish as CAP's RabbitMQTransport.SendAsync does (persistent, string headers), on
    a plain pika channel."""
    import pika

    channel.basic_publish(
        exchange, topic, probe_body(n) if body is None else body,
        pika.BasicProperties(delivery_mode=2, headers=cap_headers(wire_id, topic,
                                                                  **(headers or {})), **props),
    )


# Each kind of bad wire input: (reason, delivery keyword arguments).
POISON: list[tuple[str, dict[str, Any]]] = [
    ("not-json", {"body": b"{not json"}),
    ("not-utf8", {"body": b'{"N": "\xff\xfe"}'}),
    ("missing-id", {"headers": {"cap-msg-id": None}}),
    ("missing-topic", {"headers": {"cap-msg-name": None}}),
    ("too-large", {"body": b'{"N": 1, "Text": "' + b"x" * 5000 + b'"}'}),
    ("nul-bytes", {"body": b'{"N": 1, "Text": "a\x00b"}'}),
    ("wrong-content-type", {"content_type": "application/x-protobuf"}),
    ("broken-headers", {"headers": {"cap-corr-seq": "-1"}}),
]
# A MAX_BODY_BYTES under the too-large body above and over every other one.
POISON_MAX_BODY = 4096
