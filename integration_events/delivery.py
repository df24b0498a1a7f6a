"""Preparing one inbox row to run: its subscription, validated event and context; and
running a handler's on-commit callbacks in that handler's context."""

from __future__ import annotations

import contextvars
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.db import connections
from pydantic import ValidationError

from .context import Delivery, MessageContext
from .events import IntegrationEvent, event_class_for
from .exceptions import InvalidMessage, NoHandler, UnknownTopic
from .models import PublishedMessage, ReceivedMessage
from .registry import Subscription, get_subscription

logger = logging.getLogger("integration_events")


@dataclass
class Prepared:
    """A counted row ready to run: what its handler gets, and the subscription to run."""

    delivery: Delivery
    sub: Subscription

    @property
    def row(self) -> ReceivedMessage:
        return self.delivery.row


def parse_event(event_type: type[IntegrationEvent], content: str, *,
                exact_numbers: bool = False) -> IntegrationEvent:
    """Validate stored content as ``event_type``; corrupt or invalid content is an
    InvalidMessage (fails at once). Other exceptions from validators propagate and are
    retried: a fixed deployment may accept the payload.

    ``exact_numbers``: read JSON numbers with a fraction as Decimal first (pydantic's JSON
    parser reads them as doubles, so a C# decimal of 28 digits from another service would
    lose digits; our own publisher writes Decimal fields as strings)."""
    try:
        if exact_numbers:
            try:
                data = json.loads(content, parse_float=Decimal)
            except ValueError as exc:
                raise InvalidMessage(f"content is not valid JSON: {exc}") from exc
            # Lax, as JSON input is (ISO strings for dates, numbers for floats).
            return event_type.model_validate(data, strict=False)
        return event_type.model_validate_json(content)
    except ValidationError as exc:
        raise InvalidMessage(
            f"the payload does not validate as "
            f"{event_type.__module__}.{event_type.__qualname__}: {exc}"
        ) from exc
    except RecursionError as exc:
        raise InvalidMessage("content is nested deeper than the parser allows") from exc


def build_delivery(row: ReceivedMessage, message: PublishedMessage | None) -> Prepared:
    """Everything a handler needs for ``row``; raises for a row that cannot run."""
    if message is None:
        raise InvalidMessage("the published message row is gone")
    sub = get_subscription(row.topic, row.group)
    if sub is None:
        raise NoHandler(
            f"group {row.group!r} has no handler for topic {row.topic!r} in this process "
            "(retried: a newer deployment may have one)"
        )
    headers = message.message_headers
    event = None
    if not sub.raw:
        event_type = sub.event_type or event_class_for(row.topic)
        if event_type is None:
            raise UnknownTopic(f"no event class declares topic {row.topic!r}")
        # A message from another service (a bridge) may carry exact decimals as numbers.
        event = parse_event(event_type, message.content, exact_numbers=bool(message.origin))
    context = MessageContext(
        message_id=message.pk, topic=row.topic, group=row.group, attempt=row.attempts,
        correlation_id=message.correlation_id,
        correlation_sequence=message.correlation_sequence,
        headers={**headers, "group": row.group},
    )
    return Prepared(Delivery(row, message, context, event), sub)


class BoundCallback:
    """A handler's on-commit callback, run in that handler's context (Django's on_commit
    does not copy contextvars, and one batch commit runs up to 50 handlers' callbacks): what
    it publishes joins the handler's chain and counts against MAX_HOPS. Its transaction has
    committed, so an exception is logged, not raised into the worker."""

    def __init__(self, context: contextvars.Context, func: Callable[[], Any]) -> None:
        self.context = context
        self.func = func
        self.__qualname__ = getattr(func, "__qualname__", type(func).__qualname__)

    def __call__(self) -> None:
        try:
            self.context.run(self.func)
        except Exception:
            logger.exception("a handler's on-commit callback failed (its message is done) "
                             "callback=%s", self.__qualname__,
                             extra={"callback": self.__qualname__})


def bind_on_commit(using: str, start: int) -> None:
    """Bind the on-commit callbacks registered since ``start`` to the current context."""
    pending: list[Any] = connections[using].run_on_commit
    for index in range(start, len(pending)):
        sids, func, _robust = pending[index]
        if not isinstance(func, BoundCallback):
            pending[index] = (sids, BoundCallback(contextvars.copy_context(), func), True)
