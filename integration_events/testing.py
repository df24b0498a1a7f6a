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

from . import publisher
from .events import IntegrationEvent
from .models import ACTIVE_STATUSES, PublishedMessage, ReceivedMessage
from .signals import message_published
from .worker import PassStats, Worker

__all__ = ["capture_events", "deliver_pending", "make_due", "CapturedEvents"]


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
    count = 0
    for model in (PublishedMessage, ReceivedMessage):
        count += model.objects.using(using).filter(status__in=ACTIVE_STATUSES).update(
            next_attempt_at=Now()
        )
    return count


@contextmanager
def _no_nudges() -> Iterator[None]:
    previous = publisher._nudges_suppressed
    publisher._nudges_suppressed = True
    try:
        yield
    finally:
        publisher._nudges_suppressed = previous


def deliver_pending(
    using: str = DEFAULT_DB_ALIAS, *, include_delayed: bool = False, max_passes: int = 100
) -> PassStats:
    """Dispatch and run everything due now, handlers included, synchronously; repeat until
    nothing is due (messages the handlers publish are delivered too). ``include_delayed``
    also makes delayed and backing-off messages due first, before each pass."""
    in_transaction = connections[using].in_atomic_block

    def wrapped(run_once: Any) -> PassStats:
        if include_delayed:
            make_due(using)
        if not in_transaction:
            result: PassStats = run_once()
            return result
        # Inside a test transaction nothing commits: run the pass's on-commit callbacks as if
        # its transactions had (Django's own captureOnCommitCallbacks does the bookkeeping).
        with TestCase.captureOnCommitCallbacks(using=using, execute=True):
            result = run_once()
        return result

    worker = Worker(using=using, keep_leases=False, pass_wrapper=wrapped)
    with _no_nudges():
        return worker.run_until_idle(max_passes=max_passes)
