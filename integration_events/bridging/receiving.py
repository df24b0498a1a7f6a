"""Receiving: store a batch of deliveries from a bridge's queue in the outbox, once each.

Each delivery becomes a PublishedMessage with a local uuid7 id, its origin (the bridge)
and its wire id, and the normal engine fans it out to the local @subscriber groups. The
unique (origin, wire id, topic) makes a redelivered or re-sent message a no-op. Bad wire
input is stored as a failed message (status failed, the reason in last_error, error type
WireRejected) and never reaches a handler. The batch commits in one transaction; the caller
acknowledges it after this returns.

What the database refuses:
- the database is down or busy (the whole batch fails and a probe query fails too):
  ``DatabaseUnavailable``, nothing is acknowledged, the broker keeps the messages;
- one row it will not take (the batch fails, the probe works): the rows are stored one at
  a time, and the row that fails alone (with an error about its data, or with any error
  for the third time) is stored as an ``Unstorable`` failed message with what can be kept
  of it, else nacked to the queue's dead-letter exchange (if it has one), else logged and
  acknowledged. Nothing is retried in a loop.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.db import (
    DatabaseError,
    DataError,
    IntegrityError,
    InterfaceError,
    connections,
    transaction,
)
from django.utils import timezone

from ..bridges.codec import InboundMessage, decode_delivery
from ..bridges.config import BridgeConfig
from ..bridges.errors import BridgeError, Unstorable, WireRejected
from ..bridges.inbound import RAW_COPY_BYTES, Delivery, Rejection, storable_text
from ..conf import get_settings
from ..exceptions import HopLimitExceeded
from ..failures import Failures, describe_exception, error_type
from ..handoff import hand_off_after_commit
from ..instrumentation import get_hooks
from ..models import MessageStatus, PublishedMessage, uuid7

logger = logging.getLogger("integration_events")

# One INSERT carries at most about this much text (MySQL's max_allowed_packet is 16 MiB by
# default in MariaDB, 64 MiB in MySQL; a batch of 100 bodies of 1 MiB would not fit).
INSERT_BYTES = 4 * 1024 * 1024
MAX_KEY = 255
# Django's InterfaceError (a connection that is already closed) is not a DatabaseError.
DB_ERRORS = (DatabaseError, InterfaceError)
# Errors about the row's data, not the database's state. (ProgrammingError is not one: a
# missing table or a revoked privilege refuses every row.)
ROW_ERRORS = (DataError, IntegrityError)
STRIKES = 3
_strikes: Counter[tuple[str, str, str]] = Counter()
# Headers set on a stored rejection.
REJECTED_HEADER = "bridge-rejected"
BODY_BYTES_HEADER = "body-bytes"


class DatabaseUnavailable(BridgeError):
    """The database cannot take the batch now (down, restarting, locked): acknowledge
    nothing, reconnect and go on; the broker delivers the messages again."""


@dataclass
class Stored:
    """What became of one batch."""

    stored: int = 0
    """New messages in the outbox (rejections included)."""
    duplicates: int = 0
    """Messages stored before (redelivered or re-sent): not stored again."""
    rejected: int = 0
    """Bad wire input stored as failed messages."""
    dead_letter: list[int] = field(default_factory=list)
    """Delivery tags the database would not take: nack them (the queue's dead-letter
    exchange gets them)."""
    dropped: int = 0
    """Deliveries the database would not take and no dead-letter exchange is configured
    for: logged and acknowledged."""

    def add(self, other: Stored) -> None:
        self.stored += other.stored
        self.duplicates += other.duplicates
        self.rejected += other.rejected
        self.dead_letter += other.dead_letter
        self.dropped += other.dropped


@dataclass
class _Item:
    delivery: Delivery
    row: PublishedMessage
    rejection: Rejection | None = None

    @property
    def key(self) -> tuple[str, str, str] | None:
        if self.row.wire_id is None:
            return None
        return (self.row.origin, self.row.wire_id, self.row.topic)


def store_batch(deliveries: Sequence[Delivery], config: BridgeConfig, using: str) -> Stored:
    """Store ``deliveries`` (received over ``config``'s bridge) in one transaction; returns
    what happened. Raises DatabaseUnavailable when the database cannot take it now."""
    items = [_item(d, config) for d in deliveries]
    unique: dict[tuple[str, str, str], _Item] = {}
    batch: list[_Item] = []
    for item in items:
        key = item.key
        if key is None or key not in unique:
            batch.append(item)
            if key is not None:
                unique[key] = item
    result = Stored(duplicates=len(items) - len(batch))
    try:
        result.add(_store(batch, using))
        return result
    except DB_ERRORS as exc:
        _unusable(using)
        if not database_answers(using):
            raise DatabaseUnavailable(f"the database is unavailable: {exc}") from exc
        logger.warning("bridge batch refused, storing one at a time bridge=%s rows=%s error=%r",
                       config.name, len(batch), str(exc)[:300])
    for item in batch:
        result.add(_store_alone(item, config, using))
    return result


def _store_alone(item: _Item, config: BridgeConfig, using: str) -> Stored:
    try:
        return _store([item], using)
    except DB_ERRORS as exc:
        _unusable(using)
        if not database_answers(using) or not _refused_by_row(exc, item):
            raise DatabaseUnavailable(
                f"storing {item.row.topic} {item.row.wire_id} failed: {exc}") from exc
        refused = exc
    substitute = _Item(item.delivery, _unstorable_row(item, refused), item.rejection)
    try:
        return _store([substitute], using)
    except DB_ERRORS as exc:
        _unusable(using)
        if not database_answers(using) or not isinstance(exc, ROW_ERRORS):
            raise DatabaseUnavailable(
                f"storing {item.row.topic} {item.row.wire_id} failed: {exc}") from exc
    tag = item.delivery.delivery_tag
    if config.dead_letter_exchange:
        logger.error("bridge message not storable, dead-lettered bridge=%s wire_id=%s "
                     "topic=%s exchange=%s error=%r", config.name, item.row.wire_id,
                     item.row.topic, config.dead_letter_exchange, str(refused)[:300])
        return Stored(dead_letter=[tag])
    logger.error("bridge message not storable and no DEAD_LETTER_EXCHANGE, dropped "
                 "bridge=%s wire_id=%s topic=%s error=%r", config.name, item.row.wire_id,
                 item.row.topic, str(refused)[:300])
    return Stored(dropped=1)


def _refused_by_row(exc: BaseException, item: _Item) -> bool:
    """Whether the database refused this row (its data), rather than failed for a while
    (a lock timeout, a deadlock, a dropped link): errors about the data count at once; any
    other error counts once the same message failed alone STRIKES times in this process,
    so that a message the database always refuses cannot come back for ever."""
    if isinstance(exc, ROW_ERRORS):
        return True
    key = item.key or (item.row.origin, str(item.row.pk), item.row.topic)
    if len(_strikes) > 10_000:
        _strikes.clear()
    _strikes[key] += 1
    return _strikes[key] >= STRIKES


def _store(items: Sequence[_Item], using: str) -> Stored:
    """Insert the rows that are not stored yet, in one transaction; hand off after commit."""
    result = Stored()
    if not items:
        return result
    with transaction.atomic(using=using):
        inserted = _insert([i.row for i in items], using)
        new = [i for i in items if i.row.pk in inserted]
        result.stored = len(new)
        result.duplicates = len(items) - len(new)
        result.rejected = sum(1 for i in new if i.rejection is not None)
        if any(i.row.status == MessageStatus.PENDING for i in new):
            hand_off_after_commit(using)
        failures = Failures(using, get_hooks())
        for item in new:
            if item.row.status == MessageStatus.FAILED:
                _announce(failures, item.row, using)
    return result


def _announce(failures: Failures, row: PublishedMessage, using: str) -> None:
    def announce() -> None:
        failures.announce_failed(PublishedMessage, row.pk, row.last_error)

    transaction.on_commit(announce, using=using, robust=True)


def _insert(rows: list[PublishedMessage], using: str) -> set[uuid.UUID]:
    """Insert ``rows``, skipping those whose (origin, wire id, topic) is stored already;
    returns the ids of the rows inserted."""
    manager = PublishedMessage.objects.using(using)
    keyed = [r for r in rows if r.wire_id is not None]
    if connections[using].features.supports_ignore_conflicts:
        for chunk in _by_size(rows):
            manager.bulk_create(chunk, ignore_conflicts=True)
        found = set(manager.filter(pk__in=[r.pk for r in keyed]).values_list("pk", flat=True))
        return found | {r.pk for r in rows if r.wire_id is None}
    # SQL Server (mssql-django) has no INSERT that skips conflicts: inside the transaction,
    # insert only the missing ones; a concurrent consumer storing the same message meanwhile
    # hits the unique constraint, and the batch is stored again one row at a time.
    existing: set[tuple[str, str | None, str]] = set()
    for origin in {r.origin for r in keyed}:
        ids = [r.wire_id for r in keyed if r.origin == origin]
        existing |= {(origin, w, t) for w, t in manager.filter(origin=origin, wire_id__in=ids)
                     .values_list("wire_id", "topic")}
    missing = [r for r in rows
               if r.wire_id is None or (r.origin, r.wire_id, r.topic) not in existing]
    for chunk in _by_size(missing):
        manager.bulk_create(chunk)
    return {r.pk for r in missing}


def _by_size(rows: list[PublishedMessage]) -> Iterator[list[PublishedMessage]]:
    chunk: list[PublishedMessage] = []
    size = 0
    for row in rows:
        weight = len(row.content) + len(json.dumps(row.headers, default=str)) + 256
        if chunk and size + weight > INSERT_BYTES:
            yield chunk
            chunk, size = [], 0
        chunk.append(row)
        size += weight
    if chunk:
        yield chunk


def database_answers(using: str) -> bool:
    """Whether the database answers a trivial query now (after closing a broken link)."""
    try:
        with connections[using].cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except DB_ERRORS:
        _unusable(using)
        return False
    return True


def _unusable(using: str) -> None:
    """Drop the connection after an error: the next query opens a fresh one (after a
    database restart the old one is dead; after a failed statement PostgreSQL's transaction
    is aborted)."""
    try:
        connections[using].close()
    except DB_ERRORS:
        logger.debug("closing a broken connection failed alias=%s", using, exc_info=True)


# --- building the rows ------------------------------------------------------------------


def _item(delivery: Delivery, config: BridgeConfig) -> _Item:
    decoded = decode_delivery(delivery, bridge=config.name, naming=config.naming,
                              max_body_bytes=config.max_body_bytes)
    if isinstance(decoded, Rejection):
        logger.warning("bridge message rejected bridge=%s reason=%s wire_id=%s topic=%s "
                       "detail=%r", config.name, decoded.reason, decoded.wire_id,
                       decoded.topic, decoded.detail[:300])
        return _Item(delivery, _rejected_row(decoded), decoded)
    return _Item(delivery, _message_row(decoded))


def _message_row(message: InboundMessage) -> PublishedMessage:
    row = PublishedMessage(
        id=uuid7(), topic=message.topic, content=message.content, headers=message.headers,
        correlation_id=message.correlation_id,
        correlation_sequence=message.correlation_sequence,
        origin=message.bridge, wire_id=message.wire_id,
    )
    max_hops = get_settings().MAX_HOPS
    if message.correlation_sequence > max_hops:
        # Loops across services end here too: the sender's chain is past the limit.
        _fail(row, HopLimitExceeded(
            f"received {message.topic} {message.wire_id} at hop {message.correlation_sequence}"
            f" of its chain, past MAX_HOPS={max_hops}: an event chain that does not end"))
    return row


def _rejected_row(rejection: Rejection) -> PublishedMessage:
    headers: dict[str, Any] = {
        **rejection.headers,
        "bridge": rejection.bridge,
        REJECTED_HEADER: str(rejection.reason),
        BODY_BYTES_HEADER: rejection.body_size,
    }
    row = PublishedMessage(
        id=uuid7(), topic=(rejection.topic or "")[:MAX_KEY], content=rejection.preview,
        headers=headers, correlation_id=uuid7(), origin=rejection.bridge,
        wire_id=rejection.wire_id[:MAX_KEY] if rejection.wire_id else None,
    )
    _fail(row, WireRejected(rejection.describe()))
    return row


def _unstorable_row(item: _Item, error: BaseException) -> PublishedMessage:
    """What can surely be stored of a row the database refused: its keys, a capped and
    escaped copy of the content, and the error."""
    original = item.row
    row = PublishedMessage(
        id=uuid7(), topic=original.topic, origin=original.origin, wire_id=original.wire_id,
        content=storable_text(original.content.encode("utf-8", "surrogatepass")
                              [:RAW_COPY_BYTES]),
        headers={"bridge": original.origin, REJECTED_HEADER: "unstorable",
                 BODY_BYTES_HEADER: len(item.delivery.body)},
        correlation_id=original.correlation_id,
        correlation_sequence=original.correlation_sequence,
    )
    _fail(row, Unstorable(f"the database refused to store it: {error}"))
    return row


def _fail(row: PublishedMessage, exc: BaseException) -> None:
    now = timezone.now()
    row.status = MessageStatus.FAILED
    row.last_error = describe_exception(exc, with_traceback=False)
    row.error_type = error_type(exc)
    row.finished_at = now
    row.expires_at = now + timedelta(seconds=get_settings().FAILED_EXPIRY)
