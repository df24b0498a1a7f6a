"""Delivery counters: running totals of finished inbox rows per group and status (succeeded,
failed), advanced by the minute sweep and read by the Prometheus view.

A Prometheus counter must only grow, and a scrape must not COUNT millions of succeeded rows.
So the sweep counts what finished since its last count: one GROUP BY over the range of the
(status, finished_at) index between the mark and the cutoff, added to the totals in the same
transaction that moves the mark (a second sweep running at the same moment waits on the mark's
row lock, then finds nothing new). Nothing is added to the delivery path.

Why the count stops ``COUNT_LAG`` seconds short of now: ``finished_at`` is database time when
the finishing statement ran (on PostgreSQL, when its *transaction* began), but the row is only
visible once that transaction commits. Counting up to now would skip, for good, a row whose
transaction began before the cutoff and committed after it. Two minutes covers the longest
batch transaction (EXECUTE_BATCH_SECONDS is at most 60) with room to spare; an atomic handler
that keeps its transaction open longer than that can be missed, and so can rows deleted before
they are counted (a SUCCEEDED_EXPIRY or FAILED_EXPIRY under three minutes). The totals start at
zero with the first sweep after installation; requeued rows are counted again when they finish
again (each is a delivery).
"""

from __future__ import annotations

from datetime import timedelta

from django.db import transaction
from django.db.models import Count, F
from django.db.models.functions import Now

from .models import TERMINAL_STATUSES, CounterMark, DeliveryCounter, ReceivedMessage

COUNT_LAG = 120.0
SOURCE = "received"


def advance_counters(using: str = "default", lag: float = COUNT_LAG
                     ) -> dict[tuple[str, str], int]:
    """Add the inbox rows that finished between the mark and ``lag`` seconds ago (database
    time) to the counters and move the mark; returns what was added per (group, status).
    The first call only sets the mark."""
    with transaction.atomic(using=using):
        return _advance(using, lag)


def _advance(using: str, lag: float) -> dict[tuple[str, str], int]:
    marks = CounterMark.objects.using(using)
    mark = marks.select_for_update().filter(source=SOURCE).annotate(now=Now()).first()
    if mark is None:
        marks.get_or_create(source=SOURCE)
        return {}
    cutoff = mark.now - timedelta(seconds=lag)
    if cutoff <= mark.counted_through:
        return {}
    finished = (
        ReceivedMessage.objects.using(using)
        .filter(status__in=TERMINAL_STATUSES, finished_at__gt=mark.counted_through,
                finished_at__lte=cutoff)
        .order_by().values_list("group", "status").annotate(n=Count("id"))
    )
    added: dict[tuple[str, str], int] = {}
    counters = DeliveryCounter.objects.using(using)
    for group, status, n in finished:
        if not counters.filter(group=group, status=status).update(total=F("total") + n):
            counters.create(group=group, status=status, total=n)
        added[(group, status)] = n
    # No compare-and-set needed: the mark's row lock holds a second sweep back, and SQLite,
    # which has no SELECT ... FOR UPDATE, lets one transaction write at a time (a second one
    # that read the same mark fails to write and rolls back, adding nothing).
    marks.filter(source=SOURCE).update(counted_through=cutoff)
    return added


def totals(using: str = "default") -> dict[tuple[str, str], int]:
    """The counters: (group, status) -> rows counted so far."""
    return {(group, status): total for group, status, total in
            DeliveryCounter.objects.using(using).values_list("group", "status", "total")}


def counted_through(using: str = "default") -> float | None:
    """The mark as a Unix timestamp (None before the first sweep)."""
    mark = CounterMark.objects.using(using).filter(source=SOURCE).first()
    return mark.counted_through.timestamp() if mark is not None else None
