"""Dispatch (fan-out): the poison rule for outbox rows, rows back from an expired lease go
alone, and backends without INSERT ... ON CONFLICT DO NOTHING (SQL Server)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.db.models.functions import Now

from integration_events import publish
from integration_events.models import MessageStatus, PublishedMessage, ReceivedMessage
from integration_events.testing import make_due
from tests.eventapp.events import ProbeHappened

pytestmark = pytest.mark.django_db

DEEP = '{"n": 1, "text": ' + "[" * 100_000 + "]" * 100_000 + "}"


def test_content_nested_past_the_recursion_limit_fails_alone(worker) -> None:
    bad = publish(ProbeHappened(n=1))
    good = [publish(ProbeHappened(n=n)) for n in range(2, 5)]
    PublishedMessage.objects.filter(pk=bad.pk).update(content=DEEP)
    stats = worker.dispatch_batch()
    bad.refresh_from_db()
    assert bad.status == MessageStatus.FAILED
    assert bad.last_error.startswith("InvalidMessage:"), bad.last_error
    assert stats.dispatched == 3
    assert ReceivedMessage.objects.filter(message__in=good).count() == 6


def test_a_row_back_from_an_expired_lease_is_dispatched_alone(worker) -> None:
    rows = [publish(ProbeHappened(n=n)) for n in range(3)]
    # The worker that dispatched rows[0] died mid-batch: its lease expired, the sweep
    # released it (attempt 1 used).
    PublishedMessage.objects.filter(pk=rows[0].pk).update(
        status=MessageStatus.PROCESSING, attempts=1, lease_token=rows[0].pk,
        lease_until=Now() - timedelta(seconds=1), next_attempt_at=Now() - timedelta(seconds=1))
    assert worker.sweep().released == 1
    make_due()  # its retry is due
    first = worker.dispatch_batch()
    assert first.dispatched == 1, "the suspect row went alone"
    assert ReceivedMessage.objects.filter(message_id=rows[0].pk).count() == 2
    assert worker.dispatch_batch().dispatched == 2


def test_fan_out_without_ignore_conflicts_support_stays_idempotent(worker, monkeypatch) -> None:
    monkeypatch.setattr(connection.features, "supports_ignore_conflicts", False)
    message = publish(ProbeHappened(n=1))
    assert worker.dispatch_batch().dispatched == 1
    # A repeated fan-out (after a crash between insert and status update) adds nothing.
    ReceivedMessage.objects.filter(message=message, group="probe-b").delete()
    PublishedMessage.objects.filter(pk=message.pk).update(status=MessageStatus.PENDING)
    assert worker.dispatch_batch().dispatched == 1
    assert sorted(ReceivedMessage.objects.filter(message=message)
                  .values_list("group", flat=True)) == ["probe-a", "probe-b"]
