"""The hand-off: after a commit, nudge the pump, at most once per NUDGE_WINDOW per cache.

The outbox row is the durable record; a lost nudge only delays delivery until a running
task or the minute sweep finds the row.
"""

from __future__ import annotations

import contextvars
import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager

from django.core.cache import caches
from django.db import DEFAULT_DB_ALIAS, transaction

from .conf import get_settings
from .pump import Pump, get_pump

logger = logging.getLogger("integration_events")

_suppressed: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "integration_events_nudges_suppressed", default=False
)


@contextmanager
def suppress_nudges() -> Iterator[None]:
    """No nudges from this context (tests and in-process delivery, which need no cluster)."""
    reset = _suppressed.set(True)
    try:
        yield
    finally:
        _suppressed.reset(reset)


def nudge(alias: str = DEFAULT_DB_ALIAS, *, force: bool = False, pump: Pump | None = None
          ) -> bool:
    """Ask the task queue to look for work on ``alias``; at most one nudge per NUDGE_WINDOW
    per cache unless ``force``. Returns True if a task was enqueued."""
    settings = get_settings()
    if not settings.NUDGE or _suppressed.get():
        return False
    if not force:
        window = max(1, math.ceil(settings.NUDGE_WINDOW))
        try:
            if not caches[settings.NUDGE_CACHE].add(f"integration_events:nudge:{alias}", 1,
                                                    window):
                return False
        except Exception:
            # A cache that is down must not stop the hand-off; at worst we nudge too often.
            logger.warning("nudge cache unavailable alias=%s", alias, exc_info=True,
                           extra={"alias": alias})
    (pump or get_pump()).enqueue_process(alias)
    return True


def hand_off_after_commit(alias: str) -> None:
    """Nudge once the current transaction on ``alias`` commits (never on rollback)."""

    def hand_off() -> None:
        nudge(alias)

    # robust: a broker that is down must never turn a committed request into an error; the
    # sweep delivers later. (A function, not a partial: Django 5.2 logs its __qualname__.)
    transaction.on_commit(hand_off, using=alias, robust=True)
