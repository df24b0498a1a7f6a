from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django_q.models import OrmQ

from integration_events import publish, publish_many
from integration_events.exceptions import IntegrationEventsError
from integration_events.models import MessageStatus, PublishedMessage, ReceivedMessage
from integration_events.publisher import nudge
from integration_events.testing import capture_events, deliver_pending
from tests.eventapp.events import LonelyHappened, ProbeHappened
from tests.eventapp.models import Delivery


@pytest.mark.django_db(transaction=True)
def test_rolled_back_transaction_publishes_nothing() -> None:
    with pytest.raises(RuntimeError), transaction.atomic():
        publish(ProbeHappened(n=1))
        raise RuntimeError("business rule broken")
    assert PublishedMessage.objects.count() == 0
    deliver_pending()
    assert Delivery.objects.count() == 0
    assert OrmQ.objects.count() == 0, "a rolled-back publish must not hand off to the cluster"


@pytest.mark.django_db(transaction=True)
def test_committed_publish_hands_off_once_per_window() -> None:
    with transaction.atomic():
        for n in range(20):
            publish(ProbeHappened(n=n))
        assert OrmQ.objects.count() == 0, "no hand-off before commit"
    for n in range(20, 40):
        publish(ProbeHappened(n=n))  # outside a transaction: hands off at once (coalesced)
    assert PublishedMessage.objects.count() == 40
    assert OrmQ.objects.count() == 1, "40 publishes within the window make one nudge"


@pytest.mark.django_db(transaction=True)
def test_nudge_payload_carries_no_event_data() -> None:
    from django_q.signing import SignedPackage

    publish(ProbeHappened(n=7, text="secret-payload-text"))
    (task,) = OrmQ.objects.all()
    package = SignedPackage.loads(task.payload)
    assert package["func"] == "integration_events.tasks.process_messages"
    assert package["args"] == ("default",)
    assert "secret-payload-text" not in repr(package)


@pytest.mark.django_db
def test_content_is_json_not_pickle() -> None:
    event = ProbeHappened(n=3, text="héllo <b>")
    message = publish(event)
    stored = PublishedMessage.objects.get(pk=message.pk)
    assert json.loads(stored.content) == {"n": 3, "behaviour": "ok", "only_group": "",
                                          "text": "héllo <b>"}
    assert stored.topic == "probe.probe-happened"
    assert stored.status == MessageStatus.PENDING
    assert stored.correlation_sequence == 0
    assert stored.headers["event-version"] == 1
    assert "sent-at" in stored.headers
    # The returned message loads its database-defaulted columns on first access.
    assert message.created_at == stored.created_at
    assert message.next_attempt_at == stored.next_attempt_at


@pytest.mark.django_db
def test_headers_are_stored_and_reach_the_handler(temp_subscriber) -> None:
    seen = []

    @temp_subscriber(LonelyHappened.topic, group="header-reader")
    def read(event: LonelyHappened, context) -> None:
        seen.append(context.headers)

    publish(LonelyHappened(n=1), headers={"traceparent": "00-abc-def-01", "tenant": "t1"})
    deliver_pending()
    assert seen and seen[0]["traceparent"] == "00-abc-def-01"
    assert seen[0]["tenant"] == "t1"
    assert seen[0]["group"] == "header-reader"
    assert seen[0]["topic"] == "probe.lonely-happened"


@pytest.mark.django_db
def test_publish_many_inserts_in_one_statement() -> None:
    events = [ProbeHappened(n=n) for n in range(250)]
    with CaptureQueriesContext(connection) as queries:
        messages = publish_many(events)
    inserts = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("INSERT")]
    # One statement per batch the backend allows (SQLite caps the parameters per statement).
    fields = list(PublishedMessage._meta.concrete_fields)
    per_statement = connection.ops.bulk_batch_size(fields, messages) or len(messages)
    assert len(inserts) <= -(-len(messages) // min(per_statement, 1000))
    # At most 6: Django 5.2 gives SQLite 999 parameters per statement, 49 rows of 20 columns.
    assert len(inserts) <= 6
    assert len(messages) == 250
    assert PublishedMessage.objects.count() == 250
    assert len({m.pk for m in messages}) == 250


@pytest.mark.django_db
def test_delayed_message_waits(worker) -> None:
    message = publish(ProbeHappened(n=1), delay=timedelta(seconds=30))
    assert message.next_attempt_at > timezone.now() + timedelta(seconds=25)
    assert worker.run_until_idle().total == 0
    assert ReceivedMessage.objects.count() == 0
    assert 25 < worker.next_due_in() <= 30
    deliver_pending(include_delayed=True)
    assert Delivery.objects.count() == 2


@pytest.mark.django_db
def test_delay_validation() -> None:
    with pytest.raises(IntegrationEventsError, match="negative"):
        publish(ProbeHappened(n=1), delay=-1)
    with pytest.raises(IntegrationEventsError, match="aware"):
        publish(ProbeHappened(n=1), delay=timezone.now().replace(tzinfo=None))
    with pytest.raises(IntegrationEventsError, match="IntegrationEvent instance"):
        publish({"n": 1})  # type: ignore[arg-type]


@pytest.mark.django_db
def test_capture_events_collects_published_events() -> None:
    with capture_events() as published:
        publish(ProbeHappened(n=1))
        publish_many([ProbeHappened(n=2), LonelyHappened(n=3)])
    assert [type(e).__name__ for e in published] == [
        "ProbeHappened", "ProbeHappened", "LonelyHappened"]
    assert published.of_type(LonelyHappened) == [LonelyHappened(n=3)]
    assert len(published.messages) == 3


@pytest.mark.django_db(transaction=True)
def test_broken_broker_does_not_break_a_committed_request() -> None:
    broken = override_settings(INTEGRATION_EVENTS={"Q_OPTIONS": {"broker": "not-a-broker"}})
    with broken, transaction.atomic():
        publish(ProbeHappened(n=1))
    # on_commit(robust=True): the failing hand-off is logged, the commit stands.
    assert PublishedMessage.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_nudge_disabled_and_forced() -> None:
    with override_settings(INTEGRATION_EVENTS={"NUDGE": False}):
        publish(ProbeHappened(n=1))
        assert nudge("default", force=True) is False
    assert OrmQ.objects.count() == 0
    assert nudge("default", force=True) is True
    assert nudge("default", force=True) is True
    assert OrmQ.objects.count() == 2


@pytest.mark.django_db
def test_publishing_a_domain_event_says_to_raise_it() -> None:
    from tests.eventapp.domain_events import ProbeNoted

    with pytest.raises(IntegrationEventsError, match=r"ProbeNoted is a domain event: "
                                                     r"raise_event\(\) it"):
        publish(ProbeNoted(n=1))  # type: ignore[arg-type]
    assert not PublishedMessage.objects.exists()
