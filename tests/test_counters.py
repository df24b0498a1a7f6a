"""integration_events.counters: the running totals the minute sweep advances equal the
database's counts of finished rows, count each row once, and wait out the lag."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db.models import Count
from django.db.models.functions import Now
from django.test import override_settings

from integration_events import publish, publish_many
from integration_events.counters import advance_counters, counted_through, totals
from integration_events.models import MessageStatus, ReceivedMessage
from integration_events.testing import deliver_pending, make_due
from tests.eventapp.events import ProbeHappened

# Committed statements: on PostgreSQL a test transaction would give every row the same now().
pytestmark = pytest.mark.django_db(transaction=True)

SETTINGS = {"MAX_ATTEMPTS": 2, "NUDGE": False}


def finished_counts() -> dict[tuple[str, str], int]:
    return {(g, s): n for g, s, n in ReceivedMessage.objects.filter(
        status__in=(MessageStatus.SUCCEEDED, MessageStatus.FAILED))
        .values_list("group", "status").annotate(n=Count("id"))}


@override_settings(INTEGRATION_EVENTS=SETTINGS)
def test_the_first_sweep_sets_the_mark_and_later_ones_count_what_finished() -> None:
    assert counted_through() is None
    assert advance_counters(lag=0) == {}
    assert counted_through() is not None and totals() == {}
    publish_many([ProbeHappened(n=n) for n in range(4)])
    publish(ProbeHappened(n=9, behaviour="fail", only_group="probe-a"))
    deliver_pending()
    make_due()
    deliver_pending()
    expected = finished_counts()
    assert expected == {("probe-a", "succeeded"): 4, ("probe-a", "failed"): 1,
                        ("probe-b", "succeeded"): 5}
    assert advance_counters(lag=0) == expected
    assert totals() == expected
    assert advance_counters(lag=0) == {}, "each row is counted once"
    assert totals() == expected


@override_settings(INTEGRATION_EVENTS=SETTINGS)
def test_rows_finished_within_the_lag_wait_for_the_next_sweep() -> None:
    advance_counters(lag=0)
    publish_many([ProbeHappened(n=n) for n in range(3)])
    deliver_pending()
    # Two rows finished "a minute ago", the others just now.
    old = list(ReceivedMessage.objects.order_by("pk").values_list("pk", flat=True)[:2])
    ReceivedMessage.objects.filter(pk__in=old).update(
        finished_at=Now() - timedelta(seconds=60))
    # The mark must be older than the backdated rows for them to count.
    from integration_events.models import CounterMark

    CounterMark.objects.update(counted_through=Now() - timedelta(seconds=120))
    added = advance_counters(lag=30)
    assert sum(added.values()) == 2
    assert sum(advance_counters(lag=0).values()) == 4
    assert totals() == finished_counts()


@override_settings(INTEGRATION_EVENTS=SETTINGS)
def test_the_sweep_task_advances_the_counters_before_it_deletes() -> None:
    from integration_events.models import CounterMark
    from integration_events.tasks import sweep

    sweep()
    assert CounterMark.objects.count() == 1
    publish(ProbeHappened(n=1))
    deliver_pending()
    CounterMark.objects.update(counted_through=Now() - timedelta(seconds=3600))
    ReceivedMessage.objects.update(finished_at=Now() - timedelta(seconds=600),
                                   expires_at=Now() - timedelta(seconds=1))
    sweep()
    assert not ReceivedMessage.objects.exists(), "expired: deleted by the same sweep"
    assert totals() == {("probe-a", "succeeded"): 1, ("probe-b", "succeeded"): 1}
