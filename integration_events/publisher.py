"""publish(): write the outbox row in the caller's transaction, hand off after commit."""

from __future__ import annotations

import contextlib
import logging
import math
import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connections, models, transaction
from django.db.models.functions import Now
from django.utils import timezone

from .conf import get_settings
from .context import current_context
from .domain import DomainEvent
from .events import IntegrationEvent
from .exceptions import HopLimitExceeded, IntegrationEventsError
from .handoff import hand_off_after_commit, nudge
from .instrumentation import get_hooks
from .models import PublishedMessage, uuid7
from .ordering import check_key, sequence_counts, take_sequence
from .signals import message_published

__all__ = ["nudge", "publish", "publish_many"]

logger = logging.getLogger("integration_events")

Delay = float | int | timedelta | datetime | None
# DotNetCore.CAP's correlation header (integration_events.bridges.wire.CORR_ID), kept by a
# message a bridge received.
CAP_CORRELATION_ID = "cap-corr-id"


def _due_expression(delay: Delay) -> Any:
    """next_attempt_at for a delay, computed in database time (None: the column default)."""
    if delay is None:
        return None
    if isinstance(delay, datetime):
        # An absolute due time is the caller's; store it as given.
        if timezone.is_naive(delay):
            raise IntegrationEventsError("publish(delay=datetime) needs an aware datetime")
        return delay
    seconds = delay.total_seconds() if isinstance(delay, timedelta) else float(delay)
    if seconds < 0 or math.isnan(seconds):
        raise IntegrationEventsError(f"publish(delay=...) must not be negative, got {delay!r}")
    if seconds == 0:
        return None
    return models.ExpressionWrapper(
        Now() + timedelta(seconds=seconds), output_field=models.DateTimeField()
    )


def _build(
    event: IntegrationEvent,
    *,
    due: Any,
    headers: Mapping[str, Any] | None,
) -> PublishedMessage:
    if isinstance(event, DomainEvent):
        raise IntegrationEventsError(
            f"{type(event).__qualname__} is a domain event: raise_event() it inside the "
            "transaction (its handlers run before the commit). publish() takes integration "
            "events, which other contexts receive after the commit."
        )
    if not isinstance(event, IntegrationEvent):
        raise IntegrationEventsError(
            f"publish() takes an IntegrationEvent instance, got {type(event).__name__}"
        )
    topic = type(event).topic
    if not topic:
        raise IntegrationEventsError(
            f"{type(event).__qualname__} declares no topic: "
            "class MyEvent(IntegrationEvent, topic=MyTopics.SOMETHING)"
        )
    ctx = current_context.get()
    settings = get_settings()
    all_headers: dict[str, Any] = {
        "sent-at": timezone.now().isoformat(),
        "event-version": type(event).version,
    }
    if ctx is not None:
        correlation_id = ctx.correlation_id
        sequence = ctx.correlation_sequence + 1
        causation_id: uuid.UUID | None = ctx.message_id
        if ctx.traceparent:
            all_headers["traceparent"] = ctx.traceparent
        if ctx.headers.get(CAP_CORRELATION_ID):
            # The chain began in another service (a broker bridge): keep its wire id, so a
            # reply sent back out carries the id the chain started with.
            all_headers[CAP_CORRELATION_ID] = ctx.headers[CAP_CORRELATION_ID]
        if sequence > settings.MAX_HOPS:
            raise HopLimitExceeded(
                f"publishing {topic} from the handler of {ctx.topic} (message {ctx.message_id}, "
                f"group {ctx.group}) would make hop {sequence} of correlation {correlation_id}, "
                f"past MAX_HOPS={settings.MAX_HOPS}: an event chain that does not end"
            )
    else:
        correlation_id = uuid7()
        sequence = 0
        causation_id = None
    if headers:
        all_headers.update({str(k): v for k, v in headers.items()})
    message = PublishedMessage(
        id=uuid7(),
        topic=topic,
        content=event.model_dump_json(),
        headers=all_headers,
        correlation_id=correlation_id,
        correlation_sequence=sequence,
        causation_id=causation_id,
    )
    if ctx is None and isinstance(all_headers.get("correlation-id"), str):
        # An outside system handed us its correlation id: keep the chain.
        with contextlib.suppress(ValueError):
            message.correlation_id = uuid.UUID(all_headers.pop("correlation-id"))
    if due is not None:
        message.next_attempt_at = due
    return message


def _ordering_key(event: IntegrationEvent, explicit: str | None) -> str | None:
    """The message's ordering key: ``explicit``, else the event class's key field, else None."""
    if explicit is not None:
        return check_key(explicit)
    try:
        value = event.ordering_key_value() if isinstance(event, IntegrationEvent) else None
    except ValueError as exc:
        raise IntegrationEventsError(str(exc)) from None
    return None if value is None else check_key(value)


def publish(
    event: IntegrationEvent,
    *,
    ordering_key: str | None = None,
    delay: Delay = None,
    headers: Mapping[str, Any] | None = None,
    using: str | None = None,
) -> PublishedMessage:
    """Store ``event`` in the outbox in the current transaction and deliver it after commit.

    ``ordering_key`` (or the event class's ``ordering_key`` field) makes the message run
    after every message of the same key committed before it, in each group (see
    docs/ordering.md). ``delay`` (seconds, a timedelta, or an aware datetime) postpones
    delivery. ``headers`` are stored with the message and passed to handlers. ``using`` picks
    the database alias; the message and its inbox rows live there. Returns the stored
    PublishedMessage.
    """
    alias = using or DEFAULT_DB_ALIAS
    due = _due_expression(delay)
    message = _build(event, due=due, headers=headers)
    key = _ordering_key(event, ordering_key)
    with get_hooks().publish(message, event):
        if key is None:
            _store(message, alias, due)
        else:
            # The key's lock and the row commit together (in autocommit mode too): a later
            # number can never commit before an earlier one.
            with transaction.atomic(using=alias, savepoint=False):
                message.ordering_key = key
                message.ordering_seq = take_sequence(alias, {key: 1})[key]
                _store(message, alias, due)
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug(
            "published message_id=%s topic=%s correlation_id=%s", message.id, message.topic,
            message.correlation_id, extra={
                "message_id": str(message.id), "topic": message.topic,
                "correlation_id": str(message.correlation_id)},
        )
    message_published.send(sender=PublishedMessage, message=message, event=event)
    hand_off_after_commit(alias)
    return message


def _store(message: PublishedMessage, alias: str, due: Any) -> None:
    if due is None:
        _insert(message, alias)
        return
    message.save(using=alias, force_insert=True)
    if not isinstance(message.next_attempt_at, datetime):
        message.refresh_from_db(using=alias, fields=["next_attempt_at"])


def publish_many(
    events: Iterable[IntegrationEvent],
    *,
    ordering_key: str | None = None,
    delay: Delay = None,
    headers: Mapping[str, Any] | None = None,
    using: str | None = None,
    batch_size: int = 1000,
) -> list[PublishedMessage]:
    """Store many events in the outbox with one INSERT per ``batch_size`` and hand off once.

    ``ordering_key`` gives every event that key, in the order given; without it each event
    takes its class's key field, if any. Messages of one key run in the order of the list."""
    alias = using or DEFAULT_DB_ALIAS
    due = _due_expression(delay)
    pairs = [(event, _build(event, due=due, headers=headers)) for event in events]
    messages = [m for _, m in pairs]
    if not messages:
        return []
    keys = [_ordering_key(event, ordering_key) for event, _ in pairs]
    hooks = get_hooks()
    with contextlib.ExitStack() as stack:
        if hooks.active:
            for event, message in pairs:
                stack.enter_context(hooks.publish(message, event))
        if any(keys):
            stack.enter_context(transaction.atomic(using=alias, savepoint=False))
            _number(messages, keys, take_sequence(alias, sequence_counts(keys)))
        PublishedMessage.objects.using(alias).bulk_create(messages, batch_size=batch_size)
    for event, message in pairs:
        message_published.send(sender=PublishedMessage, message=message, event=event)
    hand_off_after_commit(alias)
    return messages


def _number(messages: list[PublishedMessage], keys: list[str | None], first: dict[str, int]
            ) -> None:
    """Give each keyed message its key and the next number of its key, in list order."""
    following = dict(first)
    for message, key in zip(messages, keys, strict=True):
        if key:
            message.ordering_key = key
            message.ordering_seq = following[key]
            following[key] += 1


# --- the hot path: one INSERT without the ORM's per-call compilation -----------------------

# Columns filled by the database's own defaults (Now()): left out of the INSERT.
_DB_DEFAULTED = ("created_at", "next_attempt_at")
_statements: dict[tuple[str, str], tuple[str, list[models.Field[Any, Any]]]] = {}


def _insert_statement(alias: str) -> tuple[str, list[models.Field[Any, Any]]]:
    conn = connections[alias]
    key = (alias, conn.vendor)
    if key not in _statements:
        fields = [
            f for f in PublishedMessage._meta.concrete_fields if f.attname not in _DB_DEFAULTED
        ]
        quote = conn.ops.quote_name
        columns = ", ".join(quote(f.column) for f in fields if f.column)
        placeholders = ", ".join(["%s"] * len(fields))
        table = quote(PublishedMessage._meta.db_table)
        _statements[key] = (f"INSERT INTO {table} ({columns}) VALUES ({placeholders})", fields)
    return _statements[key]


def _insert(message: PublishedMessage, alias: str) -> None:
    """What ``message.save(force_insert=True)`` does, minus compiling the INSERT on every
    call (a third of publish's cost); the two columns with database defaults are then loaded
    on first access, like deferred fields."""
    conn = connections[alias]
    sql, fields = _insert_statement(alias)
    params = [f.get_db_prep_save(getattr(message, f.attname), conn) for f in fields]
    with conn.cursor() as cursor:
        cursor.execute(sql, params)
    for attname in _DB_DEFAULTED:
        message.__dict__.pop(attname, None)
    message._state.adding = False
    message._state.db = alias
