from __future__ import annotations

import pytest
from django.db import transaction

from integration_events import publish
from integration_events.models import PublishedMessage, ReceivedMessage
from integration_events.testing import capture_events, deliver_pending
from tests.eventapp.events import LonelyHappened, ProbeHappened

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


class Boom(Exception):
    pass


def test_capture_events_leaves_out_events_whose_savepoint_rolled_back() -> None:
    """Inside the test transaction, as Django's captureOnCommitCallbacks sees it: an event
    published in a savepoint that rolls back is gone; one in a savepoint that is released,
    or straight in the still-open test transaction, stays."""
    with capture_events() as published:
        publish(LonelyHappened(n=1))
        with transaction.atomic():
            publish(LonelyHappened(n=2))
        with pytest.raises(Boom), transaction.atomic():
            publish(LonelyHappened(n=3))
            with transaction.atomic():
                publish(LonelyHappened(n=4))
            raise Boom
        with transaction.atomic():
            publish(LonelyHappened(n=5))
            with pytest.raises(Boom), transaction.atomic():
                publish(ProbeHappened(n=6))
                raise Boom
    assert published == [LonelyHappened(n=1), LonelyHappened(n=2), LonelyHappened(n=5)]
    assert len(published.messages) == 3
    assert {m.pk for m in published.messages} == set(
        PublishedMessage.objects.values_list("pk", flat=True)
    ), "messages holds exactly the rows that still exist"


@pytest.mark.django_db(transaction=True)
def test_capture_events_with_real_commits_and_rollbacks() -> None:
    """Outside a test transaction: a committed block's event is captured (also in
    autocommit), a rolled-back block's is not."""
    with capture_events() as published:
        with transaction.atomic():
            publish(LonelyHappened(n=1))
        with pytest.raises(Boom), transaction.atomic():
            publish(LonelyHappened(n=2))
            raise Boom
        publish(LonelyHappened(n=3))
    assert published == [LonelyHappened(n=1), LonelyHappened(n=3)]
    assert len(published.messages) == 2


def test_capture_events_around_deliver_pending_leaves_out_failed_handlers_events(
    temp_subscriber,
) -> None:
    """A handler that publishes and then raises is rolled back with its event; a handler
    that succeeds keeps its event, and the block's own callbacks stay the project's."""

    @temp_subscriber(LonelyHappened.topic, group="relay")
    def relay(event: LonelyHappened) -> None:
        publish(ProbeHappened(n=event.n, behaviour="ok", only_group="nobody"))
        if event.n == 2:
            raise RuntimeError("after publishing")

    publish(LonelyHappened(n=1))
    publish(LonelyHappened(n=2))
    connection = transaction.get_connection()
    queued = len(connection.run_on_commit)
    with capture_events() as published:
        deliver_pending()
    assert published.of_type(ProbeHappened) == [
        ProbeHappened(n=1, behaviour="ok", only_group="nobody")]
    assert all(not type(f).__name__.startswith("_Committed")
               for _, f, _ in connection.run_on_commit[queued:])
