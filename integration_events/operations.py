"""Operator actions (the admin calls these; so can you): requeue, re-execute, publish now."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.db import DEFAULT_DB_ALIAS, transaction
from django.db.models import Q
from django.db.models.functions import Now

from .handoff import nudge
from .models import MessageStatus, PublishedMessage, ReceivedMessage

_NOT_RUNNING = ~Q(status=MessageStatus.PROCESSING)


def _pks(items: Iterable[Any]) -> list[Any]:
    return [getattr(item, "pk", item) for item in items]


def _reset(qs: Any) -> int:
    return int(
        qs.filter(_NOT_RUNNING).update(
            status=MessageStatus.PENDING,
            attempts=0,
            next_attempt_at=Now(),
            finished_at=None,
            expires_at=None,
            lease_token=None,
            lease_until=None,
            error_type="",
        )
    )


def reexecute_received(
    items: Iterable[ReceivedMessage | int], using: str = DEFAULT_DB_ALIAS
) -> int:
    """Run these inbox rows' handlers again (failed or succeeded; not while one is running).
    Attempts start again from zero. Returns the number of rows requeued."""
    with transaction.atomic(using=using):
        count = _reset(ReceivedMessage.objects.using(using).filter(pk__in=_pks(items)))
        transaction.on_commit(lambda: nudge(using), using=using, robust=True)
    return count


def requeue_published(
    items: Iterable[PublishedMessage | Any], using: str = DEFAULT_DB_ALIAS
) -> int:
    """Send these messages again: a failed one is fanned out afresh; a succeeded one has every
    group's inbox row run again. Returns the number of messages requeued."""
    pks = _pks(items)
    with transaction.atomic(using=using):
        published = PublishedMessage.objects.using(using).filter(pk__in=pks)
        count = _reset(published.filter(status=MessageStatus.FAILED))
        succeeded = list(
            published.filter(status=MessageStatus.SUCCEEDED).values_list("pk", flat=True)
        )
        if succeeded:
            _reset(ReceivedMessage.objects.using(using).filter(message_id__in=succeeded))
            count += len(succeeded)
        transaction.on_commit(lambda: nudge(using), using=using, robust=True)
    return count


def publish_now(items: Iterable[PublishedMessage | Any], using: str = DEFAULT_DB_ALIAS) -> int:
    """Make delayed (or backing-off) messages due now. Returns the number changed."""
    with transaction.atomic(using=using):
        count = int(
            PublishedMessage.objects.using(using)
            .filter(pk__in=_pks(items), status__in=(MessageStatus.PENDING, MessageStatus.RETRYING))
            .update(next_attempt_at=Now())
        )
        transaction.on_commit(lambda: nudge(using), using=using, robust=True)
    return count
