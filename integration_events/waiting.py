"""The idle-waiter seam: how a task with nothing to do waits for new or newly due work."""

from __future__ import annotations

import time
from typing import Protocol

from django.utils.module_loading import import_string

from .conf import IntegrationEventsSettings, get_settings


class IdleWaiter(Protocol):
    """Contract: ``wait(alias, seconds)`` returns after at most ``seconds``, earlier when new
    work may have arrived on ``alias`` (a LISTEN/NOTIFY waiter returns on a notification);
    returning early is always safe, the task loop looks again. Today: sleep and poll."""

    def wait(self, alias: str, seconds: float) -> None:
        ...


class SleepWaiter:
    """Sleep for the whole interval; the task loop polls every POLL_INTERVAL."""

    def wait(self, alias: str, seconds: float) -> None:
        time.sleep(max(0.0, seconds))


_memo: tuple[IntegrationEventsSettings, IdleWaiter] | None = None


def get_waiter() -> IdleWaiter:
    """The IDLE_WAITER of the settings, instantiated once per settings object."""
    global _memo
    settings = get_settings()
    if _memo is None or _memo[0] is not settings:
        _memo = (settings, import_string(settings.IDLE_WAITER)())
    return _memo[1]
