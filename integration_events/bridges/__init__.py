"""Broker bridges: integration events to and from other services over a broker.

The first transport is RabbitMQ in DotNetCore.CAP's wire format (docs/bridges.md), so a
Django service can join a CAP system. This package holds what does not depend on the
engine: settings (``parse_bridges``), topic patterns, naming policies, the wire codec and
the AMQP transport (``integration_events.bridges.amqp``, which needs the ``[amqp]`` extra:
pika). Importing this package does not import pika.
"""

from __future__ import annotations

from .codec import (
    Delivery,
    InboundMessage,
    OutboundMessage,
    Rejection,
    RejectReason,
    decode_delivery,
    encode_message,
)
from .config import BridgeConfig, Transport, parse_bridge, parse_bridges
from .errors import (
    BridgeError,
    BrokerConnectionLost,
    BrokerUnavailable,
    TopologyConflict,
    WireEncodingError,
)
from .naming import Naming

__all__ = [
    "BridgeConfig",
    "BridgeError",
    "BrokerConnectionLost",
    "BrokerUnavailable",
    "Delivery",
    "InboundMessage",
    "Naming",
    "OutboundMessage",
    "RejectReason",
    "Rejection",
    "TopologyConflict",
    "Transport",
    "WireEncodingError",
    "decode_delivery",
    "encode_message",
    "parse_bridge",
    "parse_bridges",
]
