"""Test helpers: capture what was published, deliver pending messages without a cluster.

    from integration_events.testing import capture_events, deliver_pending

    def test_register(db):
        with capture_events() as published:
            register_user("a@example.com")
        assert [type(e) for e in published] == [UserRegistered]
        deliver_pending()          # runs every due handler now, in this process

Both work inside pytest-django's default test transaction, where on-commit callbacks never
fire on their own: ``deliver_pending`` runs the callbacks each pass registers (handlers' side
effects, signals) as if each pass had committed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.db.models.functions import Now
from django.test import TestCase

from . import journal
from .events import IntegrationEvent
from .handoff import suppress_nudges
from .models import PublishedMessage, ReceivedMessage
from .outcomes import PassStats
from .signals import message_published
from .worker import Worker

__all__ = ["capture_events", "deliver_pending", "make_due", "suppress_nudges", "CapturedEvents"]


class CapturedEvents(list[IntegrationEvent]):
    """The events published inside a ``capture_events()`` block, in order; ``messages``
    holds the stored PublishedMessage rows."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[PublishedMessage] = []

    def of_type(self, event_type: type[IntegrationEvent]) -> list[IntegrationEvent]:
        return [e for e in self if isinstance(e, event_type)]


class _Committed:
    """An on-commit marker registered beside each captured event: it runs when the event's
    transaction commits, and Django drops it unrun when that transaction, or a savepoint
    around the event, rolls back (the bookkeeping captureOnCommitCallbacks relies on)."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = False

    def __call__(self) -> None:
        self.done = True


@contextmanager
def capture_events() -> Iterator[CapturedEvents]:
    """Collect the events published inside the block whose transaction was not rolled back:
    committed, or still open at the end of the block (pytest-django's test transaction).
    The list fills as events are published; at the end of the block the events of
    rolled-back blocks and savepoints are taken out again."""
    captured = CapturedEvents()
    seen: list[tuple[IntegrationEvent, PublishedMessage, str, _Committed]] = []

    def receiver(sender: Any, message: PublishedMessage, event: IntegrationEvent,
                 **kwargs: Any) -> None:
        alias = message._state.db or DEFAULT_DB_ALIAS
        marker = _Committed()
        transaction.on_commit(marker, using=alias)  # in autocommit mode it runs at once
        seen.append((event, message, alias, marker))
        captured.append(event)
        captured.messages.append(message)

    message_published.connect(receiver, weak=False)
    try:
        yield captured
    finally:
        message_published.disconnect(receiver)
        _keep_not_rolled_back(captured, seen)


def _keep_not_rolled_back(
    captured: CapturedEvents,
    seen: list[tuple[IntegrationEvent, PublishedMessage, str, _Committed]],
) -> None:
    markers = {id(marker) for *_, marker in seen}
    pending: set[int] = set()
    for alias in {alias for _, _, alias, _ in seen}:
        queue = connections[alias].run_on_commit
        pending.update(id(entry[1]) for entry in queue if id(entry[1]) in markers)
        # Our markers served their purpose: take them out, so that an enclosing
        # captureOnCommitCallbacks or a later commit sees only the project's own callbacks.
        queue[:] = [entry for entry in queue if id(entry[1]) not in markers]
    kept = [(e, m) for e, m, _, marker in seen if marker.done or id(marker) in pending]
    captured[:] = [e for e, _ in kept]
    captured.messages[:] = [m for _, m in kept]


def make_due(using: str = DEFAULT_DB_ALIAS) -> int:
    """Make every delayed or backing-off message due now (simulates the passage of time)."""
    return sum(model.objects.using(using).active().update(next_attempt_at=Now())
               for model in (PublishedMessage, ReceivedMessage))


@contextmanager
def closing_journal() -> Iterator[None]:
    """Close this thread's claim journal connection afterwards (a test database with one
    open cannot be dropped; see integration_events.journal)."""
    try:
        yield
    finally:
        journal.close_connections()


def deliver_pending(
    using: str = DEFAULT_DB_ALIAS, *, include_delayed: bool = False, max_passes: int = 100
) -> PassStats:
    """Dispatch and run everything due now, handlers included, synchronously; repeat until
    nothing is due (messages the handlers publish are delivered too). ``include_delayed``
    also makes delayed and backing-off messages due first, before each pass."""
    # Inside a test transaction nothing commits: run each pass's on-commit callbacks as if
    # its transactions had (Django's own captureOnCommitCallbacks does the bookkeeping).
    in_transaction = connections[using].in_atomic_block
    worker = Worker(using=using, keep_leases=False)
    total = PassStats()
    with suppress_nudges(), closing_journal():
        for _ in range(max_passes):
            if include_delayed:
                make_due(using)
            if in_transaction:
                with TestCase.captureOnCommitCallbacks(using=using, execute=True):
                    stats = worker.run_once()
            else:
                stats = worker.run_once()
            total.add(stats)
            if not stats.total:
                break
    return total
