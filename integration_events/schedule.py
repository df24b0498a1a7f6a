"""The django-q2 schedule that runs the sweep every minute, installed by ``migrate``."""

from __future__ import annotations

import contextlib
from typing import Any

from django.db import DEFAULT_DB_ALIAS

SCHEDULE_NAME = "integration_events.sweep"


def install_schedule(using: str = DEFAULT_DB_ALIAS, **kwargs: Any) -> None:
    """Create or update the sweep schedule (idempotent; a post_migrate receiver)."""
    from django.db.utils import DatabaseError
    from django_q.models import Schedule

    from .tasks import SWEEP_TASK

    # django_q's tables may not be migrated on this alias (a database router keeps them
    # elsewhere): the schedule is then installed when migrate runs there.
    with contextlib.suppress(DatabaseError):
        Schedule.objects.using(using).update_or_create(
            name=SCHEDULE_NAME,
            defaults={
                "func": SWEEP_TASK,
                "schedule_type": Schedule.MINUTES,
                "minutes": 1,
                "repeats": -1,
            },
        )
