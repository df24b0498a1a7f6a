"""django-q2, the pump of today: the only module that imports django_q.

Tasks carry nothing but a database alias: no payloads, no pickled objects, so a queued task
that django-q2 drops (a changed SECRET_KEY, a Redis restart) loses nothing, and one it
delivers twice does nothing twice (the engine's claims decide).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from django.db import DEFAULT_DB_ALIAS
from django.db.utils import DatabaseError
from django_q.brokers import get_broker
from django_q.conf import Conf
from django_q.models import Schedule
from django_q.signals import post_spawn
from django_q.tasks import async_task

from .conf import get_settings
from .counters import advance_counters
from .instrumentation import get_hooks
from .logs import own_enqueue
from .nodes import heartbeat, start_heartbeat
from .worker import Worker

logger = logging.getLogger("integration_events")

PROCESS_TASK = "integration_events.tasks.process_messages"
SWEEP_TASK = "integration_events.tasks.sweep"
SCHEDULE_NAME = "integration_events.sweep"


class DjangoQPump:
    """Hands work to django-q2's cluster (``manage.py qcluster``)."""

    def enqueue_process(self, alias: str) -> None:
        options: dict[str, Any] = {"save": False, **get_settings().Q_OPTIONS}
        with own_enqueue():  # a nudge per publish: keep django-q2's "Enqueued" out of the log
            async_task(PROCESS_TASK, alias, q_options=options)

    def queue_size(self) -> int | None:
        return int(get_broker(get_settings().Q_OPTIONS.get("cluster")).queue_size() or 0)

    def recruit(self, alias: str) -> bool:
        """One more process task for a backlog, unless the broker already holds as many
        waiting tasks as this cluster has workers (so a long backlog cannot pile up tasks
        that would only idle once it is gone)."""
        if (self.queue_size() or 0) >= max(1, Conf.WORKERS or 1):
            return False
        self.enqueue_process(alias)
        return True


def process_messages(alias: str = DEFAULT_DB_ALIAS) -> dict[str, int]:
    """Claim and process due messages until the task's time budget or idleness ends it."""
    try:
        return Worker(using=alias, pump=DjangoQPump()).run().as_dict()
    finally:
        task_finished()


def sweep() -> dict[str, Any]:
    """The periodic backstop (every minute): advance the delivery counters, release expired
    claims, delete expired messages, then hand off whatever is due, including committed
    messages whose hand-off was lost."""
    result: dict[str, Any] = {}
    try:
        for alias in get_settings().DATABASES:
            # Before the deletes: rows that finished since the last count are counted first.
            _advance_counters(alias)
            worker = Worker(using=alias, pump=DjangoQPump())
            result[alias] = worker.sweep().as_dict()
            heartbeat(alias)
            due = worker.next_due_in()
            if due is not None and due <= get_settings().WAKE_HORIZON:
                DjangoQPump().enqueue_process(alias)
    finally:
        task_finished()
    return result


def _advance_counters(alias: str) -> None:
    try:
        advance_counters(alias)
    except Exception:
        # The counters catch up on the next sweep; the sweep's own work must go on.
        logger.warning("counting finished rows failed alias=%s", alias, exc_info=True,
                       extra={"alias": alias})


def task_finished() -> None:
    """Tell the instrumentations a task ended (they flush buffered spans and metrics)."""
    try:
        get_hooks().task_finished()
    except Exception:
        logger.warning("instrumentation hook failed hook=task_finished", exc_info=True,
                       extra={"hook": "task_finished"})


def process_started(**kwargs: Any) -> None:
    """Tell the instrumentations a worker process started (post_spawn): they set up what a
    fork must not share."""
    try:
        get_hooks().process_started()
    except Exception:
        logger.warning("instrumentation hook failed hook=process_started", exc_info=True,
                       extra={"hook": "process_started"})


def install_schedule(using: str = DEFAULT_DB_ALIAS, **kwargs: Any) -> None:
    """Create or update the sweep schedule (idempotent; a post_migrate receiver)."""
    # django_q's tables may not be migrated on this alias (a database router keeps them
    # elsewhere): the schedule is then installed when migrate runs there.
    with contextlib.suppress(DatabaseError):
        Schedule.objects.using(using).update_or_create(
            name=SCHEDULE_NAME,
            defaults={"func": SWEEP_TASK, "schedule_type": Schedule.MINUTES, "minutes": 1,
                      "repeats": -1},
        )


HEARTBEAT_UID = "integration_events.heartbeat"  # the heartbeat's post_spawn receiver


def connect_cluster_signals() -> None:
    """Start the heartbeat thread, and tell the instrumentations, in every worker process a
    qcluster spawns."""
    post_spawn.connect(start_heartbeat, dispatch_uid=HEARTBEAT_UID)
    post_spawn.connect(process_started, dispatch_uid="integration_events.instrumentation")
