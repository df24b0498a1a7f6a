"""Keep django-q2's per-task "Enqueued" line out of the logs for this library's own nudges.

django-q2's ``async_task`` logs ``Enqueued [<queue>] <id>`` at INFO on the ``django-q``
logger for every task, so every process that publishes (a web worker, ``manage.py shell``)
would print one line per nudge. Lowering the ``django-q`` logger would also hide the
cluster's own start-up, task and error lines, so instead a filter on that logger drops the
"Enqueued" records emitted while *this library* enqueues (a context variable set around its
``async_task`` call); someone else's ``async_task`` still logs as before.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

DJANGO_Q_LOGGER = "django-q"

# A context variable, not a global: another thread's (or task's) async_task running at the
# same moment must keep its line.
_enqueuing: ContextVar[bool] = ContextVar("integration_events_enqueuing", default=False)


@contextmanager
def own_enqueue() -> Iterator[None]:
    """Mark the ``async_task`` calls inside the block as this library's nudges."""
    token = _enqueuing.set(True)
    try:
        yield
    finally:
        _enqueuing.reset(token)


class OwnEnqueueFilter(logging.Filter):
    """Drops django-q2's INFO "Enqueued ..." records while ``own_enqueue()`` is active;
    passes every other record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not _enqueuing.get() or record.levelno != logging.INFO:
            return True
        return not record.getMessage().startswith("Enqueued ")


def install_enqueue_filter() -> None:
    """Add ``OwnEnqueueFilter`` to the ``django-q`` logger once (AppConfig.ready)."""
    logger = logging.getLogger(DJANGO_Q_LOGGER)
    if not any(isinstance(f, OwnEnqueueFilter) for f in logger.filters):
        logger.addFilter(OwnEnqueueFilter())
