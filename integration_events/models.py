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
from typing import Any

from django.db import models
from django.db.models.functions import Now


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

    class Meta:
        abstract = True

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


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

    def __str__(self) -> str:
        return f"{self.topic} {self.id}"

    @property
    def message_headers(self) -> dict[str, Any]:
        """All headers of this message, the stored ones and those kept in columns."""
        return {
            **(self.headers or {}),
            "message-id": str(self.id),
            "topic": self.topic,
            "correlation-id": str(self.correlation_id),
            "correlation-sequence": self.correlation_sequence,
            **({"causation-id": str(self.causation_id)} if self.causation_id else {}),
        }


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
