"""The outbox (PublishedMessage) and the inbox (ReceivedMessage).

A published message is one row per event. The worker fans it out into one received message
per subscriber group (unique on message and group) and runs each group's handler. Both tables
share the status lifecycle below; rows change only through the worker's compare-and-set
updates and the functions in ``integration_events.operations`` (requeue, publish now, skip).

A message published with an ordering key carries it (and its place in the key's commit order,
``ordering_seq``) to every inbox row; ``MessageQuerySet.claimable`` then lets an inbox row of a
key start only once every earlier row of the key in its group has finished (docs/ordering.md).
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

from . import loading
from .exceptions import InvalidHeaders
from .journal import ClaimJournal  # noqa: F401  (a model of this app: registered here)


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
    processed. last_error says why. An admin can requeue it. A keyed dead letter blocks the
    later messages of its ordering key (in its group) until it is requeued or skipped."""
    SKIPPED = "skipped", "Skipped"
    """An operator chose not to run it (``operations.skip_received``): finished without
    running, so the later messages of its ordering key go on. Deleted FAILED_EXPIRY seconds
    after finished_at."""


ACTIVE_STATUSES = (MessageStatus.PENDING, MessageStatus.RETRYING)
TERMINAL_STATUSES = (MessageStatus.SUCCEEDED, MessageStatus.FAILED, MessageStatus.SKIPPED)
# Not finished, as far as the order of a key goes: a row in one of these holds back the later
# rows of its key (a dead letter too, until an operator requeues or skips it).
UNFINISHED_STATUSES = (MessageStatus.PENDING, MessageStatus.RETRYING, MessageStatus.PROCESSING,
                       MessageStatus.FAILED)
# The longest ordering key (the column's length).
MAX_ORDERING_KEY_LENGTH = 255
# Keyed rows. The ordering indexes are partial on this condition (PostgreSQL, SQLite: unkeyed
# rows cost them nothing), and every query meant to use them repeats it, so that the planner
# can prove the index applies. MariaDB has no partial indexes: Django creates them there as full
# indexes (check models.W037, which django-q2's Task model raises already).
KEYED = {"ordering_key__gt": ""}


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

    def finish(self, pks: Iterable[Any], token: uuid.UUID | None, **changes: Any) -> int:
        """End the claim on these rows with ``changes``, but only where ``token`` still holds
        them (the compare-and-set); returns how many rows changed.

        ``token`` None: rows this transaction holds with ``SELECT ... FOR UPDATE`` instead of
        a lease (a locked claim, see integration_events.claims); their attempt is counted in
        this same write, which commits with the transaction or not at all."""
        if token is None:
            # By primary key alone: the rows are locked, so nothing else changed them (a
            # status condition too can lead the planner, with stale statistics after a
            # burst, to scan every waiting row per statement).
            return self.with_pks(pks).update(
                attempts=models.F("attempts") + 1, lease_token=None, lease_until=None,
                **changes)
        return self.held(token).with_pks(pks).update(
            lease_token=None, lease_until=None, **changes
        )

    def succeed(self, pks: Iterable[Any], token: uuid.UUID | None, expiry: float) -> int:
        """Finish the rows as succeeded (deleted ``expiry`` seconds from now)."""
        return self.finish(pks, token, status=MessageStatus.SUCCEEDED, finished_at=Now(),
                           expires_at=after(expiry))

    def hand_back(self, pks: Iterable[Any], token: uuid.UUID | None, *, refund: bool = False
                  ) -> int:
        """Return claimed rows that were never started: due again at once, no attempt used
        (``refund``: their attempt was counted already and is given back; ``token`` None:
        rows locked by this transaction, whose attempt was never written)."""
        changes: dict[str, Any] = {"status": MessageStatus.RETRYING, "next_attempt_at": Now()}
        if token is None:  # locked rows (see finish)
            return self.with_pks(pks).update(**changes)
        if refund:
            changes["attempts"] = models.F("attempts") - 1
        return self.finish(pks, token, **changes)

    def count_attempt(self, pks: Iterable[Any], token: uuid.UUID) -> int:
        """Count an attempt on the rows still held under ``token`` (before their handlers run,
        in its own committed statement, so a worker that dies still uses the attempt up)."""
        return self.held(token).with_pks(pks).update(attempts=models.F("attempts") + 1)

    def renew(self, tokens: Iterable[uuid.UUID], seconds: float) -> int:
        """Push the lease of every row held under ``tokens`` to now + ``seconds``."""
        return self.held(tokens).update(lease_until=after(seconds))

    def claimable(self, status: str) -> MessageQuerySet[M]:
        """Due rows of ``status`` that may be claimed now: for inbox rows, not of a group that
        is paused or backing off (a NOT EXISTS probe on GroupState's primary key), and, for a
        keyed row, the first unfinished one of its key in its group (``in_turn``). All in
        the same statement; a locking read does not lock the subqueries' rows."""
        due = self.due(status)
        if not _has_group(self.model):
            return due
        return due.exclude(models.Exists(_held_back_group())).in_turn()

    def due_rows(self, status: str, limit: int, columns: tuple[str, ...], *,
                 skip_locked: bool, group: str | None = None) -> list[tuple[Any, ...]]:
        """``claimable(status)`` oldest first, at most ``limit`` rows of ``columns`` (the first
        must be "pk"), locked with SKIP LOCKED if asked, of one ``group`` if given (inbox
        rows): the claim's own SELECTs, compiled once (``loading.due_rows``)."""
        return loading.due_rows(self, status, limit, columns, skip_locked=skip_locked,
                                group=group)

    def with_pks(self, pks: Iterable[Any]) -> MessageQuerySet[M]:
        """These rows by primary key (one array parameter on PostgreSQL, not an IN list of
        hundreds: ``loading.with_pks``)."""
        return loading.with_pks(self, pks)

    def in_turn(self) -> MessageQuerySet[M]:
        """Inbox rows that nothing ahead of them in their key's order holds back: unkeyed
        rows, and keyed rows with no earlier unfinished row of their key in their group and
        no earlier message of their key still to be fanned out. Two NOT EXISTS probes, each
        an index seek (ie_recv_key, ie_pub_key), evaluated for keyed rows only."""
        return self.filter(models.Q(ordering_key="") | (
            ~models.Exists(earlier_receipts()) & ~models.Exists(earlier_messages())))

    def next_due_in(self) -> float | None:
        """Seconds until the first waiting row that could be claimed falls due (negative:
        overdue), or None. Rows of a paused group do not count; a backing-off group counts
        from the end of its backoff. One index-ordered probe per status (LIMIT 1), plus one
        on GroupState for inbox rows."""
        grouped = _has_group(self.model)
        soonest: list[float] = []
        for status in ACTIVE_STATUSES:
            rows = self.filter(status=status)
            if grouped:
                rows = rows.exclude(models.Exists(_held_back_group())).in_turn()
            first = rows.order_by("next_attempt_at").annotate(db_now=Now()).values_list(
                "next_attempt_at", "db_now")[:1]
            soonest += [(due - now).total_seconds() for due, now in first]
        if grouped:  # a backoff's end may make rows claimable again
            backing_off = GroupState.objects.using(self.db).filter(
                paused=False, backoff_until__gt=Now()).annotate(db_now=Now()).order_by(
                "backoff_until").values_list("backoff_until", "db_now")[:1]
            soonest += [(until - now).total_seconds() for until, now in backing_off if until]
        return min(soonest) if soonest else None

    def expired_leases(self) -> MessageQuerySet[M]:
        """Claims whose holder stopped renewing them (killed, crashed or hung)."""
        return self.filter(status=MessageStatus.PROCESSING, lease_until__lt=Now())

    def expired_terminal(self) -> MessageQuerySet[M]:
        """Finished rows past their expiry; repeat it on the DELETE itself (see sweep)."""
        return self.filter(status__in=TERMINAL_STATUSES, expires_at__lt=Now())


def earlier_receipts() -> models.QuerySet[ReceivedMessage]:
    """For an outer inbox row: the unfinished inbox rows of its key in its group that come
    before it (for a NOT EXISTS probe; ie_recv_key)."""
    return ReceivedMessage.objects.filter(
        **KEYED, status__in=UNFINISHED_STATUSES, ordering_key=models.OuterRef("ordering_key"),
        group=models.OuterRef("group"), ordering_seq__lt=models.OuterRef("ordering_seq"))


def earlier_messages() -> models.QuerySet[PublishedMessage]:
    """For an outer inbox row: the messages of its key that come before it and are not
    fanned out yet (or are dead letters of the outbox); ie_pub_key."""
    return PublishedMessage.objects.filter(
        **KEYED, status__in=UNFINISHED_STATUSES, ordering_key=models.OuterRef("ordering_key"),
        ordering_seq__lt=models.OuterRef("ordering_seq"))


def later_receipts() -> models.QuerySet[ReceivedMessage]:
    """For an outer inbox row: the unfinished inbox rows of its key in its group that come
    after it (what a dead letter blocks)."""
    return ReceivedMessage.objects.filter(
        **KEYED, status__in=UNFINISHED_STATUSES, ordering_key=models.OuterRef("ordering_key"),
        group=models.OuterRef("group"), ordering_seq__gt=models.OuterRef("ordering_seq"))


MessageManager = models.Manager.from_queryset(MessageQuerySet)


def _has_group(model: type[models.Model]) -> bool:
    """Inbox rows have a group (and so a GroupState); outbox rows do not."""
    return any(f.name == "group" for f in model._meta.concrete_fields)


_HELD_BACK: list[Any] = []


def _held_back_group() -> Any:
    """The GroupState rows holding back the outer row's group (built once: Exists() clones
    it, and this is part of every claim)."""
    if not _HELD_BACK:
        _HELD_BACK.append(GroupState.objects.held_back().filter(group=models.OuterRef("group")))
    return _HELD_BACK[0]


class MessageBase(loading.LoadedWhole, models.Model):
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
    # The ordering key ("" for none) and the message's place in its commit order: per key
    # (and per group for inbox rows), a row starts only after the earlier ones finished.
    ordering_key = models.CharField(max_length=MAX_ORDERING_KEY_LENGTH, blank=True,
                                    default="", db_default="")
    ordering_seq = models.PositiveBigIntegerField(null=True, blank=True)

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
            # Ordering: "an earlier message of this key not fanned out yet" is one seek per
            # unfinished status (finished rows stay until they expire: without the status,
            # each probe would read every earlier finished row of the key).
            models.Index(fields=["status", "ordering_key", "ordering_seq"], name="ie_pub_key",
                         condition=models.Q(**KEYED)),
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
    # No index of its own: the unique (message, group) constraint leads with it.
    message = models.ForeignKey(PublishedMessage, on_delete=models.CASCADE,
                                related_name="receipts", db_index=False)
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
            # Claims by group (fair claiming, flow control) and the admin's counts per group.
            models.Index(fields=["group", "status", "next_attempt_at"], name="ie_recv_group_due"),
            models.Index(fields=["topic", "created_at"], name="ie_recv_topic"),
            models.Index(fields=["created_at"], name="ie_recv_created"),
            # The admin overview's delivered rate and 24-hour history (succeeded by finished_at).
            models.Index(fields=["status", "finished_at"], name="ie_recv_finished"),
            models.Index(fields=["expires_at"], name="ie_recv_expires"),
            # Failure triage: dead letters by error type (integration_events.triage).
            models.Index(fields=["status", "error_type"], name="ie_recv_triage"),
            # Ordering: "an earlier unfinished row of this key in this group" (the claim),
            # "a later one" (the sweep, the admin), keyed dead letters (the overview).
            models.Index(fields=["status", "ordering_key", "group", "ordering_seq"],
                         name="ie_recv_key", condition=models.Q(**KEYED)),
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


class OrderingKey(models.Model):
    """The commit order of one ordering key: publishing a keyed message locks this row
    (until the publishing transaction ends) and takes ``last_seq + 1``, so the message that
    commits first has the smaller sequence number. One row per key with a message left
    in either table (the sweep deletes the others: integration_events.sweep)."""

    key = models.CharField(max_length=MAX_ORDERING_KEY_LENGTH, primary_key=True)
    last_seq = models.PositiveBigIntegerField(default=0)

    class Meta:
        verbose_name = "ordering key"
        verbose_name_plural = "ordering keys"

    def __str__(self) -> str:
        return f"{self.key} #{self.last_seq}"


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
    # Consecutive backoffs (each waits twice as long, up to the retry cap): groups.hold_back.
    backoffs = models.PositiveIntegerField(default=0)
    reason = models.TextField(blank=True, default="")
    updated_at = models.DateTimeField(db_default=Now())

    objects = GroupStateQuerySet.as_manager()

    class Meta:
        verbose_name = "group state"
        verbose_name_plural = "group states"

    def __str__(self) -> str:
        return self.group


class GroupSlot(models.Model):
    """One of a group's ``max_concurrency`` slots: held (under a claim's token, with a lease
    in database time like the messages') while a worker runs that group's handlers."""

    group = models.CharField(max_length=100)
    slot = models.PositiveSmallIntegerField()
    holder = models.CharField(max_length=64, blank=True, default="")
    lease_until = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "group slot"
        verbose_name_plural = "group slots"
        constraints = [
            models.UniqueConstraint(fields=["group", "slot"], name="ie_slot_group_slot"),
        ]

    def __str__(self) -> str:
        return f"{self.group}#{self.slot}"


class RateGrant(models.Model):
    """One handler start granted under a group's ``rate_limit``, stamped with the database's
    statement clock; the grants of the last window decide the next one."""

    id = models.BigAutoField(primary_key=True)
    group = models.CharField(max_length=100)
    granted_at = models.DateTimeField(db_default=Now())

    class Meta:
        verbose_name = "rate grant"
        verbose_name_plural = "rate grants"
        indexes = [models.Index(fields=["group", "granted_at"], name="ie_grant_group_at")]

    def __str__(self) -> str:
        return f"{self.group} {self.granted_at}"


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


class DeliveryCounter(models.Model):
    """A running total of inbox rows that finished as ``status`` in ``group``: advanced by the
    minute sweep (integration_events.counters), read by the Prometheus view, so that nothing
    counts millions of succeeded rows at scrape time."""

    group = models.CharField(max_length=100)
    status = models.CharField(max_length=16, choices=MessageStatus.choices)
    total = models.BigIntegerField(default=0)

    class Meta:
        verbose_name = "delivery counter"
        verbose_name_plural = "delivery counters"
        constraints = [
            models.UniqueConstraint(fields=["group", "status"], name="ie_counter_group_status"),
        ]

    def __str__(self) -> str:
        return f"{self.group} {self.status} {self.total}"


class CounterMark(models.Model):
    """How far the delivery counters have counted: every inbox row that finished (by
    ``finished_at``) up to ``counted_through`` is in them. One row per table counted."""

    source = models.CharField(max_length=50, primary_key=True)
    counted_through = models.DateTimeField(db_default=Now())

    class Meta:
        verbose_name = "counter mark"
        verbose_name_plural = "counter marks"

    def __str__(self) -> str:
        return f"{self.source} through {self.counted_through}"


class Dashboard(PublishedMessage):
    """No table of its own: a proxy that puts the dashboard on the admin's index page
    (Django lists models there, not custom views); its list redirects to the overview."""

    class Meta:
        proxy = True
        verbose_name = "dashboard"
        verbose_name_plural = "dashboard"
