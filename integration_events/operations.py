"""Operator actions (the admin calls these; so can you): requeue, re-execute, publish now,
skip, pause and resume a group.

Each returns how many rows it changed and, given ``on_changed``, calls it inside its
transaction with the primary keys of exactly those rows (the admin writes its audit entries
there). Candidate rows are read with ``select_for_update()`` so that no worker claims them
between the read and the update.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from django.db import DEFAULT_DB_ALIAS, transaction
from django.db.models import Q
from django.db.models.functions import Now

from .conf import get_settings
from .handoff import nudge
from .models import (
    ACTIVE_STATUSES,
    GroupState,
    MessageStatus,
    PublishedMessage,
    ReceivedMessage,
    after,
)

_NOT_RUNNING = ~Q(status=MessageStatus.PROCESSING)

ChangedHook = Callable[[list[Any]], object]


def _pks(items: Iterable[Any]) -> list[Any]:
    return [getattr(item, "pk", item) for item in items]


def _locked_keys(qs: Any) -> list[Any]:
    return list(qs.select_for_update().order_by("pk").values_list("pk", flat=True))


def _reset(qs: Any) -> list[Any]:
    """Reset the rows of ``qs`` that are not running; returns their keys."""
    keys = _locked_keys(qs.filter(_NOT_RUNNING))
    if not keys:
        return []
    rows = qs.model._default_manager.using(qs.db).filter(pk__in=keys)
    changed = rows.filter(_NOT_RUNNING).update(
        status=MessageStatus.PENDING,
        attempts=0,
        next_attempt_at=Now(),
        finished_at=None,
        expires_at=None,
        lease_token=None,
        lease_until=None,
        error_type="",
    )
    if changed != len(keys):
        # No row locks on this database and a worker claimed a row in between.
        keys = list(rows.filter(status=MessageStatus.PENDING, attempts=0, lease_token=None)
                    .values_list("pk", flat=True))
    return keys


def reexecute_received(
    items: Iterable[ReceivedMessage | int], using: str = DEFAULT_DB_ALIAS,
    *, on_changed: ChangedHook | None = None,
) -> int:
    """Run these inbox rows' handlers again (failed or succeeded; not while one is running).
    Attempts start again from zero. Returns the number of rows requeued."""
    with transaction.atomic(using=using):
        keys = _reset(ReceivedMessage.objects.using(using).filter(pk__in=_pks(items)))
        if on_changed is not None and keys:
            on_changed(keys)
        transaction.on_commit(lambda: nudge(using), using=using, robust=True)
    return len(keys)


def requeue_published(
    items: Iterable[PublishedMessage | Any], using: str = DEFAULT_DB_ALIAS,
    *, on_changed: ChangedHook | None = None,
) -> int:
    """Send these messages again: a failed (or skipped) one is fanned out afresh; a succeeded
    one has every group's inbox row run again. Returns the number of messages requeued."""
    pks = _pks(items)
    with transaction.atomic(using=using):
        published = PublishedMessage.objects.using(using).filter(pk__in=pks)
        keys = _reset(published.filter(status__in=(MessageStatus.FAILED, MessageStatus.SKIPPED)))
        succeeded = _locked_keys(published.filter(status=MessageStatus.SUCCEEDED))
        if succeeded:
            _reset(ReceivedMessage.objects.using(using).filter(message_id__in=succeeded))
            keys += succeeded
        if on_changed is not None and keys:
            on_changed(keys)
        transaction.on_commit(lambda: nudge(using), using=using, robust=True)
    return len(keys)


def publish_now(
    items: Iterable[PublishedMessage | Any], using: str = DEFAULT_DB_ALIAS,
    *, on_changed: ChangedHook | None = None,
) -> int:
    """Make delayed (or backing-off) messages due now. Returns the number changed."""
    with transaction.atomic(using=using):
        waiting = PublishedMessage.objects.using(using).filter(
            pk__in=_pks(items), status__in=ACTIVE_STATUSES)
        keys = _locked_keys(waiting)
        if keys and waiting.filter(pk__in=keys).update(next_attempt_at=Now()) != len(keys):
            # No row locks on this database and a worker claimed a row in between.
            keys = list(waiting.filter(pk__in=keys).values_list("pk", flat=True))
        if on_changed is not None and keys:
            on_changed(keys)
        transaction.on_commit(lambda: nudge(using), using=using, robust=True)
    return len(keys)


# What may be skipped: a dead letter, or a row waiting for an attempt (never a running one).
SKIPPABLE = (MessageStatus.FAILED, MessageStatus.PENDING, MessageStatus.RETRYING)


def _skip(qs: Any) -> list[Any]:
    """Mark the skippable rows of ``qs`` skipped; returns their keys."""
    skippable = qs.filter(status__in=SKIPPABLE)
    keys = _locked_keys(skippable)
    if not keys:
        return []
    changed = skippable.filter(pk__in=keys).update(
        status=MessageStatus.SKIPPED, finished_at=Now(),
        expires_at=after(get_settings().FAILED_EXPIRY), lease_token=None, lease_until=None)
    if changed != len(keys):
        # No row locks on this database and a worker claimed a row in between.
        keys = list(qs.filter(pk__in=keys, status=MessageStatus.SKIPPED)
                    .values_list("pk", flat=True))
    return keys


def skip_received(
    items: Iterable[ReceivedMessage | int], using: str = DEFAULT_DB_ALIAS,
    *, on_changed: ChangedHook | None = None,
) -> int:
    """Never run these inbox rows (failed, pending or retrying; not a running one): they are
    finished as skipped, so the later messages of their ordering key go on. Kept like a dead
    letter (FAILED_EXPIRY). Returns the number of rows skipped."""
    with transaction.atomic(using=using):
        keys = _skip(ReceivedMessage.objects.using(using).filter(pk__in=_pks(items)))
        if on_changed is not None and keys:
            on_changed(keys)
        transaction.on_commit(lambda: nudge(using), using=using, robust=True)
    return len(keys)


def skip_published(
    items: Iterable[PublishedMessage | Any], using: str = DEFAULT_DB_ALIAS,
    *, on_changed: ChangedHook | None = None,
) -> int:
    """Never fan these messages out (failed, pending or retrying ones): finished as skipped,
    so the later messages of their ordering key go on. Returns the number skipped."""
    with transaction.atomic(using=using):
        keys = _skip(PublishedMessage.objects.using(using).filter(pk__in=_pks(items)))
        if on_changed is not None and keys:
            on_changed(keys)
        transaction.on_commit(lambda: nudge(using), using=using, robust=True)
    return len(keys)


def pause_group(group: str, using: str = DEFAULT_DB_ALIAS) -> bool:
    """Stop starting handlers of ``group`` on every cluster: claims skip it and units already
    claimed re-check before they start, so none starts later than about POLL_INTERVAL after
    this returns; running handlers finish; the backlog stays. Survives restarts (the state is
    a GroupState row). Returns False if it was paused already."""
    with transaction.atomic(using=using):
        states = GroupState.objects.using(using)
        states.get_or_create(group=group)
        was_paused = states.select_for_update().filter(group=group, paused=True).exists()
        states.filter(group=group).update(paused=True, paused_at=Now(), updated_at=Now())
    return not was_paused


def resume_group(group: str, using: str = DEFAULT_DB_ALIAS) -> bool:
    """Let ``group`` run again; its backlog drains. Returns False if it was not paused."""
    with transaction.atomic(using=using):
        resumed = GroupState.objects.using(using).filter(group=group, paused=True).update(
            paused=False, paused_at=None, updated_at=Now())
        transaction.on_commit(lambda: nudge(using), using=using, robust=True)
    return bool(resumed)
