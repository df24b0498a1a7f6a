"""The pump seam: how the engine asks the task queue to run it.

The engine itself never imports a task queue. A pump turns "there is work on this database
alias" into a task that runs ``Worker.run`` there. Today's pump is django-q2's
(:class:`integration_events.tasks.DjangoQPump`); another (Django's tasks framework, say) is one
new class named in ``INTEGRATION_EVENTS["PUMP"]``.
"""

from __future__ import annotations

from typing import Protocol

from django.utils.module_loading import import_string

from .conf import IntegrationEventsSettings, get_settings


class Pump(Protocol):
    """Contract: ``enqueue_process(alias)`` queues one task that runs the worker on ``alias``
    (payload: the alias only; a task delivered twice or dropped loses nothing, the claims
    decide); ``recruit(alias)`` queues one more such task for a backlog unless the queue
    already holds as many as there are workers to take them, and says whether it did;
    ``queue_size()`` is the number of tasks waiting, or None if the queue cannot tell."""

    def enqueue_process(self, alias: str) -> None:
        ...

    def recruit(self, alias: str) -> bool:
        ...

    def queue_size(self) -> int | None:
        ...


_memo: tuple[IntegrationEventsSettings, Pump] | None = None


def get_pump() -> Pump:
    """The PUMP of the settings, instantiated once per settings object."""
    global _memo
    settings = get_settings()
    if _memo is None or _memo[0] is not settings:
        _memo = (settings, import_string(settings.PUMP)())
    return _memo[1]
