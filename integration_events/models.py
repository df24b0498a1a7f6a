"""The outbox (PublishedMessage) and the inbox (ReceivedMessage).

A published message is one row per event. The worker fans it out into one received message
per subscriber group (unique on message and group) and runs each group's handler. Both tables
share the status lifecycle below; rows change only through the worker's compare-and-set
updates and the functions in ``integration_events.operations`` (requeue, publish now).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterable
from datetime import timedelta
from typing import Any, ClassVar, TypeVar

from django.db import models
from django.db.models.functions import Now

from .exceptions import InvalidHeaders


def uuid7() -> uuid.UUID:
    """A time-ordered UUID (RFC 9562 version 7): 48 bits of Unix milliseconds, then random.

    Message ids are primary keys; time-ordered ones keep B-tree inserts at the right edge of
    the index instead of scattering them, which matters at millions of rows.
    """
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= ((rand >> 62) & 0xFFF) << 64
    value |= 0b10 << 62
    value |= rand & ((1 << 62) - 1)
    return uuid.UUID(int=value)


class MessageStatus(models.TextChoices):
    """The lifecycle of a published and of a received message."""

    PENDING = "pending", "Pending"
    """Waiting for its first attempt; a delayed message stays here until next_attempt_at."""
    PROCESSING = "processing", "Processing"
    """Claimed by a worker whose lease runs until lease_until (database time)."""
    RETRYING = "retrying", "Retrying"
    """An attempt failed; it is tried again at next_attempt_at (exponential backoff)."""
    SUCCEEDED = "succeeded", "Succeeded"
    """Done. Deleted SUCCEEDED_EXPIRY seconds after finished_at."""
    FAILED = "failed", "Failed"
    """Gave up (the dead letter): the retry limit was reached or the input can never be
    processed. last_error says why. An admin can requeue it."""


ACTIVE_STATUSES = (MessageStatus.PENDING, MessageStatus.RETRYING)
TERMINAL_STATUSES = (MessageStatus.SUCCEEDED, MessageStatus.FAILED)


def after(seconds: float) -> Any:
    """``Now() + seconds`` in database time, for leases, retries and expiry."""
    return models.ExpressionWrapper(
        Now() + timedelta(seconds=seconds), output_field=models.DateTimeField()
    )


M = TypeVar("M", bound="MessageBase")


class MessageQuerySet(models.QuerySet[M]):
    """Every row-level query of the engine, in one place.

    A claimed row is held under a ``lease_token`` while it is PROCESSING; ``finish`` is the
    compare-and-set that ends a claim (only the holder of the token can change the row), so
    a worker whose lease expired and was taken over cannot overwrite its successor's outcome.
    """

    def due(self, status: str) -> MessageQuerySet[M]:
        """Rows of one status whose next attempt is due (database time), oldest first: an
        ordered range of the (status, next_attempt_at) index."""
        return self.filter(status=status, next_attempt_at__lte=Now()).order_by(
            "next_attempt_at"
        )

    def active(self) -> MessageQuerySet[M]:
        """Rows waiting for an attempt (pending or retrying), due or not."""
        return self.filter(status__in=ACTIVE_STATUSES)

    def held(self, token: uuid.UUID | Iterable[uuid.UUID]) -> MessageQuerySet[M]:
        """Rows still held under ``token`` (or any of several tokens)."""
        if isinstance(token, uuid.UUID):
            return self.filter(lease_token=token, status=MessageStatus.PROCESSING)
        return self.filter(lease_token__in=list(token), status=MessageStatus.PROCESSING)

    def finish(self, pks: Iterable[Any], token: uuid.UUID, **changes: Any) -> int:
        """End the claim on these rows with ``changes``, but only where ``token`` still holds
        them (the compare-and-set); returns how many rows changed."""
        return self.held(token).filter(pk__in=list(pks)).update(
            lease_token=None, lease_until=None, **changes
        )

    def succeed(self, pks: Iterable[Any], token: uuid.UUID, expiry: float) -> int:
        """Finish the rows as succeeded (deleted ``expiry`` seconds from now)."""
        return self.finish(pks, token, status=MessageStatus.SUCCEEDED, finished_at=Now(),
                           expires_at=after(expiry))

    def hand_back(self, pks: Iterable[Any], token: uuid.UUID, *, refund: bool = False) -> int:
        """Return claimed rows that were never started: due again at once, no attempt used
        (``refund``: their attempt was counted already and is given back)."""
        changes: dict[str, Any] = {"status": MessageStatus.RETRYING, "next_attempt_at": Now()}
        if refund:
            changes["attempts"] = models.F("attempts") - 1
        return self.finish(pks, token, **changes)

    def count_attempt(self, pks: Iterable[Any], token: uuid.UUID) -> int:
        """Count an attempt on the rows still held under ``token`` (before their handlers run,
        in its own committed statement, so a worker that dies still uses the attempt up)."""
        return self.held(token).filter(pk__in=list(pks)).update(attempts=models.F("attempts") + 1)

    def renew(self, tokens: Iterable[uuid.UUID], seconds: float) -> int:
        """Push the lease of every row held under ``tokens`` to now + ``seconds``."""
        return self.held(tokens).update(lease_until=after(seconds))

    def claimable(self, status: str) -> MessageQuerySet[M]:
        """Due rows of ``status`` that may be claimed now: for inbox rows, not of a group that
        is paused or backing off (a NOT EXISTS probe on GroupState's primary key, in the same
        statement; a locking read does not lock the subquery's rows)."""
        due = self.due(status)
        if not any(f.name == "group" for f in self.model._meta.concrete_fields):
            return due
        return due.exclude(models.Exists(
            GroupState.objects.held_back().filter(group=models.OuterRef("group"))))

    def next_due_in(self) -> float | None:
        """Seconds until the first waiting row falls due (negative: overdue), or None."""
        value = self.active().aggregate(due=models.Min(models.ExpressionWrapper(
            models.F("next_attempt_at") - Now(), output_field=models.DurationField())))["due"]
        return None if value is None else float(value.total_seconds())

    def expired_leases(self) -> MessageQuerySet[M]:
        """Claims whose holder stopped renewing them (killed, crashed or hung)."""
        return self.filter(status=MessageStatus.PROCESSING, lease_until__lt=Now())

    def expired_terminal(self) -> MessageQuerySet[M]:
        """Finished rows past their expiry; repeat it on the DELETE itself (see sweep)."""
        return self.filter(status__in=TERMINAL_STATUSES, expires_at__lt=Now())


MessageManager = models.Manager.from_queryset(MessageQuerySet)


class MessageBase(models.Model):
    status = models.CharField(
        max_length=16, choices=MessageStatus.choices, default=MessageStatus.PENDING
    )
    # Attempts started, counted when a worker takes the message (so a handler that kills its
    # worker still uses up attempts and ends up failed).
    attempts = models.PositiveIntegerField(default=0)
    # When the message is due: now for a new one, later for a delayed one or a retry.
    next_attempt_at = models.DateTimeField(db_default=Now())
    created_at = models.DateTimeField(db_default=Now())
    finished_at = models.DateTimeField(null=True, blank=True)
    # Terminal rows are deleted by the sweep once this has passed.
    expires_at = models.DateTimeField(null=True, blank=True)
    # The claim: who holds it and until when (database time). Completing a message is a
    # compare-and-set on lease_token, so a worker whose lease expired cannot overwrite the
    # outcome of the worker that took over.
    lease_token = models.UUIDField(null=True, blank=True)
    lease_until = models.DateTimeField(null=True, blank=True)
    # Which worker process took the latest claim ("host:pid"), for the admin's Nodes page.
    claimed_by = models.CharField(max_length=200, blank=True, default="")
    last_error = models.TextField(blank=True, default="")
    # The kind of the last failure (the exception's class name, e.g. "InvalidMessage",
    # "LeaseExpired"), set with last_error. A row back from an expired lease is claimed alone.
    error_type = models.CharField(max_length=100, blank=True, default="", db_default="")

    objects: ClassVar[MessageManager[Any]] = MessageManager()

    class Meta:
        abstract = True


class PublishedMessage(MessageBase):
    """The outbox: one row per published event, written in the publisher's transaction."""

    id = models.UUIDField(primary_key=True, default=uuid7, editable=False)
    topic = models.CharField(max_length=255)
    # JSON text, validated by the event class when consumed. Text rather than a JSON column
    # so that corrupt content can be stored, shown and failed with a reason, never crash a
    # worker while loading the row.
    content = models.TextField()
    # Every header that travels with the message (see docs/headers.md).
    headers = models.JSONField(default=dict, blank=True)
    correlation_id = models.UUIDField()
    correlation_sequence = models.PositiveIntegerField(default=0)
    # The message whose handler published this one (None for a chain's first event).
    causation_id = models.UUIDField(null=True, blank=True)
    # A message received over a broker bridge: the bridge's name and the sender's message id
    # (CAP's cap-msg-id). Blank and None for a message published here: NULL, not "", so that
    # the unique (origin, wire_id, topic) below never compares two local messages.
    origin = models.CharField(max_length=64, blank=True, default="", db_default="")
    wire_id = models.CharField(max_length=255, null=True, blank=True)  # noqa: DJ001

    objects: ClassVar[MessageManager[PublishedMessage]] = MessageManager()

    class Meta:
        verbose_name = "published message"
        verbose_name_plural = "published messages"
        ordering = ("-created_at",)
        indexes = [
            models.Index(fields=["status", "next_attempt_at"], name="ie_pub_due"),
            models.Index(fields=["status", "lease_until"], name="ie_pub_lease"),
            models.Index(fields=["topic", "created_at"], name="ie_pub_topic"),
            models.Index(fields=["created_at"], name="ie_pub_created"),
            models.Index(fields=["expires_at"], name="ie_pub_expires"),
            models.Index(fields=["correlation_id"], name="ie_pub_corr"),
            models.Index(fields=["causation_id"], name="ie_pub_cause"),
        ]
        # A received message is stored once per (bridge, sender's id, topic), however often
        # the broker delivers it. unique_together rather than a UniqueConstraint with a
        # condition: local rows have wire_id NULL, which every backend keeps distinct in a
        # unique index (mssql-django filters unique_together to non-NULL rows), and MySQL
        # and MariaDB have no partial indexes to express the condition.
        unique_together = [("origin", "wire_id", "topic")]

    def __str__(self) -> str:
        return f"{self.topic} {self.id}"

    @property
    def message_headers(self) -> dict[str, Any]:
        """All headers of this message, the stored ones and those kept in columns. Raises
        InvalidHeaders if the stored headers are not a JSON object (a tampered row)."""
        stored = self.headers if self.headers is not None else {}
        if not isinstance(stored, dict):
            raise InvalidHeaders(
                f"the stored headers are not a JSON object: {_preview(stored)}"
            )
        return {
            **stored,
            "message-id": str(self.id),
            "topic": self.topic,
            "correlation-id": str(self.correlation_id),
            "correlation-sequence": self.correlation_sequence,
            **({"causation-id": str(self.causation_id)} if self.causation_id else {}),
        }


def _preview(value: Any, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class ReceivedMessage(MessageBase):
    """The inbox: one row per (published message, subscriber group).

    The handler's own database writes commit in the same transaction as this row's move to
    succeeded, so a redelivered message never repeats them.
    """

    id = models.BigAutoField(primary_key=True)
    message = models.ForeignKey(
        PublishedMessage, on_delete=models.CASCADE, related_name="receipts"
    )
    group = models.CharField(max_length=100)
    # Copied from the message so that lists and filters need no join.
    topic = models.CharField(max_length=255)
    # Dotted path of the handler at fan-out time (the subscriber registry is authoritative).
    handler = models.CharField(max_length=255, blank=True, default="")

    objects: ClassVar[MessageManager[ReceivedMessage]] = MessageManager()

    class Meta:
        verbose_name = "received message"
        verbose_name_plural = "received messages"
        ordering = ("-created_at",)
        constraints = [
            models.UniqueConstraint(fields=["message", "group"], name="ie_recv_message_group"),
        ]
        indexes = [
            models.Index(fields=["status", "next_attempt_at"], name="ie_recv_due"),
            models.Index(fields=["status", "lease_until"], name="ie_recv_lease"),
            models.Index(fields=["group", "status"], name="ie_recv_group"),
            models.Index(fields=["topic", "created_at"], name="ie_recv_topic"),
            models.Index(fields=["created_at"], name="ie_recv_created"),
            # The admin overview's delivered rate and 24-hour history (succeeded by finished_at).
            models.Index(fields=["status", "finished_at"], name="ie_recv_finished"),
            models.Index(fields=["expires_at"], name="ie_recv_expires"),
        ]

    def __str__(self) -> str:
        return f"{self.topic} {self.message_id} -> {self.group}"

    @property
    def message_headers(self) -> dict[str, Any]:
        headers = dict(self.message.message_headers)
        headers["group"] = self.group
        if self.last_error:
            headers["exception"] = self.last_error.split("\n", 1)[0]
        return headers


class GroupStateQuerySet(models.QuerySet["GroupState"]):
    def held_back(self) -> GroupStateQuerySet:
        """Groups whose rows must not be claimed now: paused, or backing off."""
        return self.filter(models.Q(paused=True) | models.Q(backoff_until__gt=Now()))


class GroupState(models.Model):
    """What every cluster must know about a subscriber group: paused by an operator, or
    backing off as a whole until ``backoff_until`` (its outside system is down). Claims skip
    the due rows of such a group; the rows stay where they are. One row per group that has
    ever been paused or backed off."""

    group = models.CharField(max_length=100, primary_key=True)
    paused = models.BooleanField(default=False)
    paused_at = models.DateTimeField(null=True, blank=True)
    backoff_until = models.DateTimeField(null=True, blank=True)
    # Consecutive backoffs (each waits twice as long, up to the retry cap); 0 once it works.
    backoffs = models.PositiveIntegerField(default=0)
    reason = models.TextField(blank=True, default="")
    updated_at = models.DateTimeField(db_default=Now())

    objects = GroupStateQuerySet.as_manager()

    class Meta:
        verbose_name = "group state"
        verbose_name_plural = "group states"

    def __str__(self) -> str:
        return self.group


class WorkerNode(models.Model):
    """A running cluster process that serves integration events (heartbeat rows for the
    admin's Nodes page; django-q2's own stats live in a cache the admin may not share)."""

    name = models.CharField(max_length=200, unique=True)
    hostname = models.CharField(max_length=200)
    pid = models.IntegerField()
    started_at = models.DateTimeField(db_default=Now())
    last_seen_at = models.DateTimeField(db_default=Now())
    processed = models.BigIntegerField(default=0)

    class Meta:
        verbose_name = "worker node"
        verbose_name_plural = "worker nodes"
        ordering = ("-last_seen_at",)

    def __str__(self) -> str:
        return self.name


class Dashboard(PublishedMessage):
    """No table of its own: a proxy that puts the dashboard on the admin's index page
    (Django lists models there, not custom views); its list redirects to the overview."""

    class Meta:
        proxy = True
        verbose_name = "dashboard"
        verbose_name_plural = "dashboard"
