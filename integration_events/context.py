"""The context of the message being handled, visible to code the handler calls."""

from __future__ import annotations

import contextvars
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .models import PublishedMessage, ReceivedMessage


@dataclass(frozen=True)
class MessageContext:
    """What a handler may want to know about the message it handles.

    Handlers receive it as their second argument if they declare one. Events published while a
    handler runs inherit ``correlation_id``, get ``correlation_sequence + 1`` and name this
    message as their cause.
    """

    message_id: uuid.UUID
    topic: str
    group: str
    attempt: int
    correlation_id: uuid.UUID
    correlation_sequence: int
    headers: dict[str, Any] = field(default_factory=dict)

    @property
    def traceparent(self) -> str | None:
        value = self.headers.get("traceparent")
        return str(value) if value else None


current_context: contextvars.ContextVar[MessageContext | None] = contextvars.ContextVar(
    "integration_events_current_context", default=None
)


@dataclass
class Delivery:
    """One received message ready to run: its inbox row, the published message, the context
    its handler gets, and the validated event (None for raw subscriptions)."""

    row: ReceivedMessage
    message: PublishedMessage
    context: MessageContext
    event: Any = None
