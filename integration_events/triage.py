"""Failure triage: dead letters grouped by what went wrong, and operations on a whole group.

A *failure group* is the inbox's failed rows with the same ``error_type`` (the exception's class
name, stored with every failure) and the same ``handler`` (modelled on NServiceBus
ServicePulse's retry groups: one cause, one place). Each group shows its count, when its first
and last member failed and one sample; "requeue" runs every member again (through
:func:`integration_events.operations.reexecute_received`), "delete" removes them. Both act on
the members that had failed up to ``through`` (what the operator saw), in batches, so a group
of a million rows neither builds a giant IN list nor holds one long transaction.

Reads use the (status, error_type) index; the groups are bounded by the failed rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import DEFAULT_DB_ALIAS, transaction
from django.db.models import Count, Max, Min, QuerySet

from .models import MessageStatus, ReceivedMessage
from .operations import reexecute_received

BATCH_SIZE = 1000
MAX_GROUPS = 200


@dataclass(frozen=True)
class FailureGroup:
    """Dead letters of one error type in one handler."""

    error_type: str
    handler: str
    count: int
    first_seen: datetime | None
    last_seen: datetime | None
    sample: ReceivedMessage | None

    @property
    def sample_error(self) -> str:
        """The first line of the sample's stored error."""
        return self.sample.last_error.split("\n", 1)[0] if self.sample is not None else ""


def failure_groups(using: str = DEFAULT_DB_ALIAS, limit: int = MAX_GROUPS
                   ) -> list[FailureGroup]:
    """The failure groups, largest first (then most recent), at most ``limit``."""
    rows = list(
        ReceivedMessage.objects.using(using).filter(status=MessageStatus.FAILED).order_by()
        .values("error_type", "handler")
        .annotate(count=Count("id"), first_seen=Min("finished_at"),
                  last_seen=Max("finished_at"), sample=Max("id"))
        .order_by("-count", "-last_seen", "error_type", "handler")[:limit]
    )
    samples = ReceivedMessage.objects.using(using).only(
        "id", "message_id", "group", "topic", "handler", "last_error", "error_type",
        "attempts", "finished_at").in_bulk([r["sample"] for r in rows])
    return [FailureGroup(error_type=r["error_type"], handler=r["handler"], count=r["count"],
                         first_seen=r["first_seen"], last_seen=r["last_seen"],
                         sample=samples.get(r["sample"]))
            for r in rows]


def members(error_type: str, handler: str, *, through: datetime | None = None,
            using: str = DEFAULT_DB_ALIAS) -> QuerySet[ReceivedMessage]:
    """The group's failed rows (that failed up to ``through``, if given)."""
    qs = ReceivedMessage.objects.using(using).filter(
        status=MessageStatus.FAILED, error_type=error_type, handler=handler)
    return qs.filter(finished_at__lte=through) if through is not None else qs


def _in_batches(error_type: str, handler: str, through: datetime | None, using: str,
                batch_size: int) -> Any:
    """The members' primary keys, a batch at a time, in key order (each batch is read after
    the previous one was acted on, so the walk always moves on)."""
    last = None
    while True:
        qs = members(error_type, handler, through=through, using=using).order_by("pk")
        if last is not None:
            qs = qs.filter(pk__gt=last)
        pks = list(qs.values_list("pk", flat=True)[:batch_size])
        if not pks:
            return
        yield pks
        last = pks[-1]
        if len(pks) < batch_size:
            return


def requeue_group(error_type: str, handler: str, *, through: datetime | None = None,
                  using: str = DEFAULT_DB_ALIAS, batch_size: int = BATCH_SIZE) -> int:
    """Run every dead letter of the group again, attempts from zero. Returns how many."""
    done = 0
    for pks in _in_batches(error_type, handler, through, using, batch_size):
        done += reexecute_received(pks, using=using)
    return done


def delete_group(error_type: str, handler: str, *, through: datetime | None = None,
                 using: str = DEFAULT_DB_ALIAS, batch_size: int = BATCH_SIZE) -> int:
    """Delete every dead letter of the group (its published message stays until its own
    expiry). Returns how many were deleted."""
    done = 0
    for pks in _in_batches(error_type, handler, through, using, batch_size):
        with transaction.atomic(using=using):
            # Still failed: a row requeued meanwhile by someone else is left alone.
            deleted, _ = ReceivedMessage.objects.using(using).filter(
                pk__in=pks, status=MessageStatus.FAILED).delete()
        done += deleted
    return done
