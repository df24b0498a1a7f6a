"""django-q2 entry points. They carry nothing but a database alias: no payloads, no pickled
objects, so a queued task that django-q2 drops (a changed SECRET_KEY, a Redis restart) loses
nothing, and one it delivers twice does nothing twice (the engine's claims decide)."""

from __future__ import annotations

import logging
from typing import Any

from .conf import get_settings
from .worker import PassStats, SweepStats, Worker

logger = logging.getLogger("integration_events")

PROCESS_TASK = "integration_events.tasks.process_messages"
SWEEP_TASK = "integration_events.tasks.sweep"


def _stop_exceptions() -> tuple[type[BaseException], ...]:
    from django_q.exceptions import TimeoutException

    return (KeyboardInterrupt, SystemExit, TimeoutException)


def process_messages(alias: str = "default") -> dict[str, int]:
    """Claim and process due messages until the task's time budget or idleness ends it."""
    stats: PassStats = Worker(
        using=alias, stop_exceptions=_stop_exceptions(), recruit=lambda: recruit(alias)
    ).run()
    return {"dispatched": stats.dispatched, "succeeded": stats.succeeded,
            "retried": stats.retried, "failed": stats.failed}


def sweep() -> dict[str, Any]:
    """The periodic backstop (every minute): release expired claims, delete expired messages,
    then process whatever is due, including committed messages whose hand-off was lost."""
    from .nodes import heartbeat

    result: dict[str, Any] = {}
    for alias in get_settings().DATABASES:
        worker = Worker(using=alias, stop_exceptions=_stop_exceptions())
        swept: SweepStats = worker.sweep()
        heartbeat(alias)
        due = worker.next_due_in()
        if due is not None and due <= get_settings().WAKE_HORIZON:
            enqueue_process(alias)
        result[alias] = swept.__dict__
    return result


def connect_cluster_signals() -> None:
    """Start the heartbeat thread in every worker process a qcluster spawns."""
    from django_q.signals import post_spawn

    from .nodes import start_heartbeat

    post_spawn.connect(start_heartbeat, dispatch_uid="integration_events.heartbeat")


def enqueue_process(alias: str) -> None:
    from django_q.tasks import async_task

    from .logs import own_enqueue

    options: dict[str, Any] = {"save": False, **get_settings().Q_OPTIONS}
    with own_enqueue():  # a nudge per publish: keep django-q2's "Enqueued" line out of the log
        async_task(PROCESS_TASK, alias, q_options=options)


def recruit(alias: str) -> bool:
    """Enqueue one more process task for a backlog, unless the broker already holds as many
    waiting tasks as this cluster has workers (so a long backlog cannot pile up tasks that
    would only idle once it is gone). Returns True if a task was enqueued."""
    from django_q.brokers import get_broker
    from django_q.conf import Conf

    options = get_settings().Q_OPTIONS
    if get_broker(options.get("cluster")).queue_size() >= max(1, Conf.WORKERS or 1):
        return False
    enqueue_process(alias)
    return True
