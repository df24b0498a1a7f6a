from __future__ import annotations

import pytest
from django.db import transaction

from integration_events import publish
from integration_events.models import ReceivedMessage
from integration_events.testing import deliver_pending
from tests.eventapp.events import LonelyHappened

pytestmark = pytest.mark.django_db


def test_deliver_pending_runs_on_commit_side_effects_of_handlers(temp_subscriber) -> None:
    """Inside pytest-django's test transaction nothing commits; deliver_pending still runs
    the on-commit callbacks of handlers that succeeded, and only theirs."""
    sent: list[int] = []

    @temp_subscriber(LonelyHappened.topic, group="mailer")
    def mail(event: LonelyHappened) -> None:
        transaction.on_commit(lambda: sent.append(event.n))
        if event.n == 2:
            raise RuntimeError("smtp down")

    assert transaction.get_connection().in_atomic_block
    publish(LonelyHappened(n=1))
    publish(LonelyHappened(n=2))
    stats = deliver_pending()
    assert sent == [1], "the failed handler's side effect was rolled back with it"
    assert stats.succeeded == 1 and stats.retried == 1


def test_deliver_pending_follows_chains_and_delays(temp_subscriber) -> None:
    seen: list[int] = []

    @temp_subscriber(LonelyHappened.topic, group="counter")
    def count(event: LonelyHappened) -> None:
        seen.append(event.n)
        if event.n < 3:
            publish(LonelyHappened(n=event.n + 1), delay=60)

    publish(LonelyHappened(n=1))
    deliver_pending()
    assert seen == [1], "the delayed follow-up is not due yet"
    deliver_pending(include_delayed=True)
    assert seen == [1, 2, 3]
    assert ReceivedMessage.objects.filter(status="succeeded").count() == 3
