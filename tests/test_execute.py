"""Execution: the poison rule for inbox rows (anything that breaks preparing one row fails
that row alone), and handlers' on-commit callbacks running in their own handler's context."""

from __future__ import annotations

import pytest
from django.test import override_settings
from django.utils import timezone

from integration_events import publish
from integration_events.models import MessageStatus, PublishedMessage, ReceivedMessage
from integration_events.testing import make_due
from tests.eventapp.events import CommitChained, ProbeHappened, Stamped
from tests.eventapp.models import Delivery

pytestmark = pytest.mark.django_db


def test_headers_that_are_not_an_object_fail_only_their_message(worker) -> None:
    bad = publish(ProbeHappened(n=1))
    good = publish(ProbeHappened(n=2))
    PublishedMessage.objects.filter(pk=bad.pk).update(headers=["x"])
    worker.run_until_idle()
    rows = ReceivedMessage.objects.filter(message=bad)
    assert {r.status for r in rows} == {MessageStatus.FAILED}
    assert all(r.last_error.startswith("InvalidHeaders:") for r in rows), rows[0].last_error
    assert "['x']" in rows[0].last_error, "the reason shows the stored headers"
    assert set(ReceivedMessage.objects.filter(message=good).values_list("status", flat=True)) \
        == {MessageStatus.SUCCEEDED}


def test_a_validator_raising_a_non_value_error_is_retried_then_failed(worker) -> None:
    with override_settings(INTEGRATION_EVENTS={"MAX_ATTEMPTS": 3, "RETRY_BASE_DELAY": 0.01,
                                               "RETRY_MAX_DELAY": 0.01}):
        message = publish(Stamped(n=1, at=timezone.now()))
        good = publish(ProbeHappened(n=2))
        for _ in range(6):
            worker.run_until_idle()
            make_due()
    row = ReceivedMessage.objects.get(message=message)
    assert row.status == MessageStatus.FAILED
    assert row.attempts == 3, "retried by the normal policy, no attempt past MAX_ATTEMPTS"
    assert row.last_error.startswith("AttributeError:"), row.last_error
    assert Delivery.objects.filter(message_id=good.pk).count() == 2


@pytest.mark.django_db(transaction=True)
def test_on_commit_publishes_keep_their_own_handlers_chain(worker) -> None:
    first = publish(CommitChained(depth=0, label="a"))
    second = publish(CommitChained(depth=0, label="b"))
    stats = worker.run_once()  # one execute batch runs both handlers, one commit
    assert stats.succeeded == 2
    children = {m.causation_id: m for m in PublishedMessage.objects.filter(
        topic=CommitChained.topic, correlation_sequence__gt=0)}
    for parent in (first, second):
        child = children[parent.pk]
        assert child.correlation_id == parent.correlation_id
        assert child.correlation_sequence == 1


@pytest.mark.django_db(transaction=True)
def test_a_loop_through_on_commit_stops_at_max_hops(worker) -> None:
    with override_settings(INTEGRATION_EVENTS={"MAX_HOPS": 4}):
        root = publish(CommitChained(depth=0))
        worker.run_until_idle(max_passes=40)
    chain = PublishedMessage.objects.filter(topic=CommitChained.topic)
    assert chain.count() == 5, "hops 0..4, then the limit"
    assert set(chain.values_list("correlation_id", flat=True)) == {root.correlation_id}
