"""The django-q2 schedule that runs the sweep every minute, installed by ``migrate``."""

from __future__ import annotations

from typing import Any

from django.db import DEFAULT_DB_ALIAS

SCHEDULE_NAME = "integration_events.sweep"


def install_schedule(using: str = DEFAULT_DB_ALIAS, **kwargs: Any) -> None:
    """Create or update the sweep schedule (idempotent; a post_migrate receiver)."""
    from django.db.utils import DatabaseError
    from django_q.models import Schedule

    from .tasks import SWEEP_TASK

    try:
        Schedule.objects.using(using).update_or_create(
            name=SCHEDULE_NAME,
            defaults={
                "func": SWEEP_TASK,
                "schedule_type": Schedule.MINUTES,
                "minutes": 1,
                "repeats": -1,
            },
        )
    except DatabaseError:
        # django_q's tables are not migrated on this alias (e.g. a database router keeps them
        # elsewhere): the schedule is installed when migrate runs there.
        pass
