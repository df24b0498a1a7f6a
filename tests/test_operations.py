"""integration_events.operations: the operator actions the admin calls (requeue, re-execute,
publish now), tested directly."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from integration_events import operations, publish
from integration_events.models import MessageStatus, PublishedMessage, ReceivedMessage
from integration_events.testing import deliver_pending
from tests.admin_helpers import failed_message
from tests.eventapp.events import ProbeHappened
from tests.eventapp.models import Delivery

pytestmark = pytest.mark.django_db


def claim(model: type[PublishedMessage] | type[ReceivedMessage], pk: object) -> None:
    """Put one row in processing, as a worker holding its lease would."""
    model.objects.filter(pk=pk).update(
        status=MessageStatus.PROCESSING, lease_token=uuid.uuid4(),
        lease_until=timezone.now() + timedelta(seconds=30), claimed_by="elsewhere:1")


def test_requeue_published_fans_a_failed_message_out_again() -> None:
    message = publish(ProbeHappened(n=1))
    PublishedMessage.objects.filter(pk=message.pk).update(
        status=MessageStatus.FAILED, attempts=3, last_error="boom",
        finished_at=timezone.now(), expires_at=timezone.now())
    assert operations.requeue_published([message]) == 1
    message.refresh_from_db()
    assert (message.status, message.attempts, message.finished_at, message.expires_at) == (
        MessageStatus.PENDING, 0, None, None)
    deliver_pending()
    assert set(ReceivedMessage.objects.filter(message=message).values_list(
        "group", "status")) == {("probe-a", "succeeded"), ("probe-b", "succeeded")}


def test_requeue_published_reruns_every_group_of_a_succeeded_message() -> None:
    message = failed_message()
    assert PublishedMessage.objects.get(pk=message.pk).status == MessageStatus.SUCCEEDED
    assert operations.requeue_published([message.pk]) == 1
    assert set(ReceivedMessage.objects.filter(message=message).values_list(
        "status", "attempts")) == {(MessageStatus.PENDING, 0)}


def test_requeue_published_skips_waiting_and_running_messages() -> None:
    waiting = publish(ProbeHappened(n=1))
    running = publish(ProbeHappened(n=2))
    claim(PublishedMessage, running.pk)
    assert operations.requeue_published([waiting, running]) == 0
    assert PublishedMessage.objects.get(pk=running.pk).status == MessageStatus.PROCESSING


def test_reexecute_received_runs_handlers_again_but_not_while_running() -> None:
    message = publish(ProbeHappened(n=1))
    deliver_pending()
    a = ReceivedMessage.objects.get(message=message, group="probe-a")
    b = ReceivedMessage.objects.get(message=message, group="probe-b")
    claim(ReceivedMessage, b.pk)
    assert operations.reexecute_received(ReceivedMessage.objects.filter(message=message)) == 1
    a.refresh_from_db()
    b.refresh_from_db()
    assert (a.status, a.attempts) == (MessageStatus.PENDING, 0)
    assert b.status == MessageStatus.PROCESSING
    deliver_pending()
    assert Delivery.objects.filter(group="probe-a").count() == 2


def test_publish_now_makes_delayed_and_backing_off_messages_due() -> None:
    delayed = publish(ProbeHappened(n=1), delay=3600)
    done = publish(ProbeHappened(n=2))
    deliver_pending()
    assert operations.publish_now([delayed, done]) == 1
    delayed.refresh_from_db()
    assert delayed.next_attempt_at <= timezone.now()
    assert deliver_pending().dispatched == 1


def test_operations_work_on_the_alias_they_are_given() -> None:
    message = failed_message()
    with pytest.raises(Exception, match="other"):
        operations.requeue_published([message], using="other")
    assert operations.requeue_published([message], using="default") == 1


def test_each_operation_reports_exactly_the_rows_it_changed() -> None:
    seen: list[list[object]] = []
    failed = failed_message()  # dispatched: its probe-a row failed, probe-b succeeded
    a, b = (ReceivedMessage.objects.get(message=failed, group=g) for g in ("probe-a", "probe-b"))
    running = publish(ProbeHappened(n=2))
    deliver_pending()
    busy = ReceivedMessage.objects.get(message=running, group="probe-a")
    claim(ReceivedMessage, busy.pk)
    assert operations.reexecute_received([a, b, busy], on_changed=seen.append) == 2
    assert [sorted(keys) for keys in seen] == [sorted([a.pk, b.pk])]

    seen.clear()
    undelivered = publish(ProbeHappened(n=3))
    PublishedMessage.objects.filter(pk=undelivered.pk).update(status=MessageStatus.FAILED)
    waiting = publish(ProbeHappened(n=4))
    assert operations.requeue_published([failed, undelivered, waiting],
                                        on_changed=seen.append) == 2
    assert [sorted(map(str, keys)) for keys in seen] == [sorted([str(failed.pk),
                                                                 str(undelivered.pk)])]

    seen.clear()
    delayed = publish(ProbeHappened(n=5), delay=3600)
    assert operations.publish_now([delayed, running], on_changed=seen.append) == 1
    assert seen == [[delayed.pk]]
    seen.clear()
    assert operations.publish_now([running], on_changed=seen.append) == 0
    assert seen == []  # nothing changed: not called
