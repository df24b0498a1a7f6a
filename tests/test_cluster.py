"""End to end with a real `manage.py qcluster` subprocess against the test database."""

from __future__ import annotations

import time

import pytest
from django.db.models import Count
from django.test import override_settings

from integration_events import publish, publish_many
from integration_events.models import MessageStatus, PublishedMessage, ReceivedMessage
from integration_events.tasks import sweep
from tests.conftest import wait_for
from tests.eventapp.events import ProbeHappened
from tests.eventapp.models import Delivery

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.cluster]


def succeeded() -> int:
    return ReceivedMessage.objects.filter(status=MessageStatus.SUCCEEDED).count()


def test_cluster_delivers_published_events(cluster) -> None:
    c = cluster()
    publish_many([ProbeHappened(n=n) for n in range(100)])
    wait_for(lambda: succeeded() == 200, 60, "200 deliveries", c.log)
    assert Delivery.objects.count() == 200
    assert not PublishedMessage.objects.exclude(status=MessageStatus.SUCCEEDED).exists()


def test_lost_hand_off_is_recovered_by_the_sweep(cluster) -> None:
    c = cluster()
    # The publisher "dies" between commit and hand-off: no nudge ever reaches the cluster.
    with override_settings(INTEGRATION_EVENTS={"NUDGE": False}):
        publish(ProbeHappened(n=1))
    time.sleep(3)
    assert succeeded() == 0, "nothing else would have delivered it"
    sweep()  # what the schedule runs every minute
    wait_for(lambda: succeeded() == 2, 30, "delivery after the sweep", c.log)


def test_a_retry_due_soon_runs_promptly(cluster) -> None:
    c = cluster(IE_RETRY_BASE_DELAY="2")
    publish(ProbeHappened(n=1, behaviour="fail:1", only_group="probe-a"))
    wait_for(lambda: succeeded() == 2, 30, "the retry to succeed", c.log)
    row = ReceivedMessage.objects.get(group="probe-a")
    assert row.attempts == 2
    first = Delivery.objects.filter(group="probe-b").get().created_at  # ~ attempt 1's time
    second = Delivery.objects.get(group="probe-a").created_at
    gap = (second - first).total_seconds()
    # Backoff after attempt 1 is 1-2 s (base 2 s, equal jitter); it must not wait for the
    # minute schedule.
    assert 0.9 < gap < 4.5, f"retry ran {gap:.1f}s after the first attempt"


def test_long_handler_is_not_started_twice(cluster) -> None:
    c = cluster(IE_LEASE_SECONDS="1.5", IE_Q_WORKERS="2")
    publish(ProbeHappened(n=1, behaviour="sleep:6", only_group="probe-a"))
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:
        # Other workers keep sweeping while it runs: its lease must stay renewed.
        sweep()
        time.sleep(0.5)
    wait_for(lambda: succeeded() == 2, 30, "the long handler to finish", c.log)
    row = ReceivedMessage.objects.get(group="probe-a")
    assert row.attempts == 1, f"started {row.attempts} times"
    assert Delivery.objects.filter(group="probe-a").count() == 1


def test_handler_that_kills_its_worker_ends_up_failed(cluster) -> None:
    c = cluster(IE_LEASE_SECONDS="1")
    publish(ProbeHappened(n=1, behaviour="exit", only_group="probe-a"))
    publish(ProbeHappened(n=2))

    def settled() -> bool:
        sweep()
        return ReceivedMessage.objects.filter(
            status__in=(MessageStatus.SUCCEEDED, MessageStatus.FAILED)).count() == 4

    wait_for(settled, 90, "the crashing message to reach the dead letter", c.log)
    dead = ReceivedMessage.objects.get(status=MessageStatus.FAILED)
    assert dead.group == "probe-a" and dead.attempts == 3
    assert dead.last_error.startswith("LeaseExpired")
    counts = dict(ReceivedMessage.objects.values_list("status").annotate(n=Count("id")))
    assert counts == {"succeeded": 3, "failed": 1}
