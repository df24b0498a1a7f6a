"""The django-q2 entry points and the schedule that `migrate` installs."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db.models.functions import Now
from django.test import override_settings
from django_q.models import OrmQ, Schedule

from integration_events import publish
from integration_events.models import MessageStatus, ReceivedMessage
from integration_events.tasks import SCHEDULE_NAME, install_schedule, process_messages, sweep
from tests.eventapp.events import ProbeHappened

pytestmark = pytest.mark.django_db(transaction=True)


def test_migrate_installs_the_sweep_schedule_once() -> None:
    install_schedule()
    install_schedule()
    (schedule,) = Schedule.objects.filter(name=SCHEDULE_NAME)
    assert schedule.func == "integration_events.tasks.sweep"
    assert (schedule.schedule_type, schedule.minutes, schedule.repeats) == (
        Schedule.MINUTES, 1, -1)


def test_process_messages_delivers_within_its_budget() -> None:
    with override_settings(INTEGRATION_EVENTS={"NUDGE": False, "TASK_TIME_BUDGET": 5}):
        publish(ProbeHappened(n=1))
        result = process_messages("default")
    assert result == {"dispatched": 1, "succeeded": 2, "retried": 0, "failed": 0, "lost": 0}


def test_sweep_releases_expired_claims_and_nudges_when_work_is_due() -> None:
    with override_settings(INTEGRATION_EVENTS={"NUDGE": False}):
        publish(ProbeHappened(n=1))
    process_messages("default")
    ReceivedMessage.objects.update(
        status=MessageStatus.PROCESSING, lease_until=Now() - timedelta(seconds=5),
        lease_token="00000000-0000-0000-0000-000000000001")
    assert OrmQ.objects.count() == 0
    result = sweep()
    assert result["default"]["released"] == 2
    assert OrmQ.objects.count() == 1, "released rows are due: the sweep hands off at once"
