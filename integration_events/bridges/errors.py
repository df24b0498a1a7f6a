"""Errors of the broker bridges. All derive from IntegrationEventsError."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..exceptions import IntegrationEventsError, InvalidMessage

if TYPE_CHECKING:
    from .amqp_publisher import PublishResult


class BridgeError(IntegrationEventsError):
    """Base class of the bridge errors."""


class BrokerUnavailable(BridgeError):
    """The broker cannot be reached or the connection is not open.

    Not the message's fault: back off (the whole bridge, not one message) and call
    ``connect()`` again.
    """


class BrokerConnectionLost(BrokerUnavailable):
    """The connection or channel closed (or confirms stopped coming) in the middle of an
    operation. ``results`` holds the per-message outcome of an interrupted publish: the
    confirmed ones reached the broker, the others must be sent again after reconnecting."""

    def __init__(self, message: str, results: Sequence[PublishResult] = ()) -> None:
        super().__init__(message)
        self.results: list[PublishResult] = list(results)


class TopologyConflict(BridgeError):
    """The broker refused to declare the exchange or queue (406 PRECONDITION_FAILED): it
    exists with other properties or arguments. The message names the fix."""


class WireEncodingError(InvalidMessage):
    """A stored message cannot be put on the wire (content not JSON, body over the size
    limit). Retrying does not help: it fails at once."""


class WireRejected(InvalidMessage):
    """A received delivery can never be processed (not JSON, not UTF-8, no id, too large,
    ...): it is stored as a failed message with this error type and the reason."""


class Unstorable(InvalidMessage):
    """A received message the database refused to store (the error says why): kept as a
    failed message with what could be stored of it."""
