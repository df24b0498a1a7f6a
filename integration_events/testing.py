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

from django.db import DEFAULT_DB_ALIAS, connections
from django.db.models.functions import Now
from django.test import TestCase

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


@contextmanager
def capture_events() -> Iterator[CapturedEvents]:
    """Collect every event published inside the block (rolled back or not)."""
    captured = CapturedEvents()

    def receiver(sender: Any, message: PublishedMessage, event: IntegrationEvent,
                 **kwargs: Any) -> None:
        captured.append(event)
        captured.messages.append(message)

    message_published.connect(receiver, weak=False)
    try:
        yield captured
    finally:
        message_published.disconnect(receiver)


def make_due(using: str = DEFAULT_DB_ALIAS) -> int:
    """Make every delayed or backing-off message due now (simulates the passage of time)."""
    return sum(model.objects.using(using).active().update(next_attempt_at=Now())
               for model in (PublishedMessage, ReceivedMessage))


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
    with suppress_nudges():
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
