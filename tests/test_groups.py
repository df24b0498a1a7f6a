"""Group-wide state: a group whose outside system is down backs off as a whole, spending no
attempts; a paused or backing-off group's rows are not claimed, the others' are."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import timedelta

import pytest
from django.db.models.functions import Now
from django.test import override_settings

from integration_events import publish
from integration_events.context import Delivery
from integration_events.exceptions import GroupUnavailable
from integration_events.models import GroupState, MessageStatus, ReceivedMessage
from integration_events.worker import Worker
from tests.eventapp.events import ProbeHappened
from tests.eventapp.models import Delivery as DeliveryRow
from tests.test_seams import EchoResolver

pytestmark = pytest.mark.django_db


class DownResolver(EchoResolver):
    """The echo group's outside system is down until ``up`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.up = False

    def handle_batch(self, deliveries: Sequence[Delivery]) -> list[BaseException | None]:
        if not self.up:
            raise GroupUnavailable("broker refused the connection", retry_after=30)
        return super().handle_batch(deliveries)


@pytest.fixture
def down() -> Iterator[DownResolver]:
    from integration_events.registry import register_resolver, unregister_resolver

    resolver = DownResolver()
    register_resolver(resolver)
    yield resolver
    unregister_resolver(resolver)


def test_an_unavailable_group_backs_off_without_spending_attempts(down) -> None:
    publish(ProbeHappened(n=2))
    worker = Worker(keep_leases=False)
    worker.run_until_idle()
    echo = ReceivedMessage.objects.get(group="echo:test")
    assert (echo.status, echo.attempts) == (MessageStatus.RETRYING, 0), "attempt refunded"
    state = GroupState.objects.get(group="echo:test")
    assert state.backoffs == 1 and "broker refused" in state.reason
    assert GroupState.objects.held_back().filter(group="echo:test").exists()
    # The other groups ran as usual.
    assert DeliveryRow.objects.count() == 2
    # Backing off: its row is due but not claimed.
    assert worker.run_until_idle().total == 0
    # Still down when the backoff ends: the next wait doubles.
    GroupState.objects.filter(group="echo:test").update(backoff_until=Now() - timedelta(seconds=1))
    worker.run_until_idle()
    state.refresh_from_db()
    assert state.backoffs == 2
    # Up again: it delivers, with its first counted attempt.
    down.up = True
    GroupState.objects.filter(group="echo:test").update(backoff_until=Now() - timedelta(seconds=1))
    worker.run_until_idle()
    echo.refresh_from_db()
    assert (echo.status, echo.attempts) == (MessageStatus.SUCCEEDED, 1)


def test_a_paused_group_is_not_claimed_and_its_backlog_stays() -> None:
    GroupState.objects.create(group="probe-a", paused=True)
    publish(ProbeHappened(n=1))
    Worker(keep_leases=False).run_until_idle()
    assert set(ReceivedMessage.objects.values_list("group", "status")) == {
        ("probe-a", MessageStatus.PENDING), ("probe-b", MessageStatus.SUCCEEDED)}
    GroupState.objects.filter(group="probe-a").update(paused=False)
    assert Worker(keep_leases=False).run_until_idle().succeeded == 1


class HalfwayResolver(EchoResolver):
    """The echo group's outside system takes the even deliveries, then goes away: the odd
    ones are reported as GroupUnavailable (a broker connection lost mid-batch)."""

    def handle_batch(self, deliveries: Sequence[Delivery]) -> list[BaseException | None]:
        outcomes = super().handle_batch(deliveries)
        return [GroupUnavailable("connection lost mid-batch", retry_after=30) if error
                else None for error in outcomes]


def test_a_delivery_reported_unavailable_goes_back_and_the_group_backs_off() -> None:
    from integration_events.registry import register_resolver, unregister_resolver

    resolver = HalfwayResolver()
    register_resolver(resolver)
    try:
        messages = [publish(ProbeHappened(n=n)) for n in range(4)]
        Worker(keep_leases=False).run_until_idle()
    finally:
        unregister_resolver(resolver)
    rows = {r.message_id: r for r in ReceivedMessage.objects.filter(group="echo:test")}
    # The ones it took are done; the rest went back with their attempt refunded.
    assert [(rows[m.pk].status, rows[m.pk].attempts) for m in messages] == [
        (MessageStatus.SUCCEEDED, 1), (MessageStatus.RETRYING, 0),
        (MessageStatus.SUCCEEDED, 1), (MessageStatus.RETRYING, 0)]
    assert rows[messages[1].pk].last_error == "", "not a failed attempt"
    state = GroupState.objects.get(group="echo:test")
    assert state.backoffs == 1 and "connection lost mid-batch" in state.reason


# Backoffs as in production: up to an hour.
LONG_CAP = {"RETRY_MAX_DELAY": 3600}


@override_settings(INTEGRATION_EVENTS=LONG_CAP)
def test_a_report_while_the_backoff_is_in_force_does_not_double_it() -> None:
    from integration_events.groups import hold_back

    assert hold_back("default", "echo:test", 30, "broker refused") == 30
    first = GroupState.objects.get(group="echo:test")
    # A second unit of the same pass, claimed before the backoff began, reports it too.
    again = hold_back("default", "echo:test", 30, "broker refused")
    state = GroupState.objects.get(group="echo:test")
    assert 0 < again <= 30
    assert (state.backoffs, state.backoff_until) == (1, first.backoff_until)


@override_settings(INTEGRATION_EVENTS=LONG_CAP)
@pytest.mark.parametrize(("ended_ago", "wait", "backoffs"), [
    # The last wait (240 s) ended 100 s ago: failing again within one wait is consecutive.
    (100, 480, 5),
    # It ended ten minutes ago: the group worked for longer than its last wait, start over.
    (600, 30, 1),
])
def test_an_outage_is_consecutive_only_within_one_wait_of_the_last(
        ended_ago: int, wait: float, backoffs: int) -> None:
    from django.utils import timezone

    from integration_events.groups import hold_back

    # Four backoffs of 30, 60, 120, 240 s before this one.
    GroupState.objects.create(group="echo:test", backoffs=4,
                              backoff_until=timezone.now() - timedelta(seconds=ended_ago))
    assert hold_back("default", "echo:test", 30, "broker refused") == wait
    assert GroupState.objects.get(group="echo:test").backoffs == backoffs
