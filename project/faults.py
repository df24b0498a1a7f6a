"""Demo-only fault injection for the sample subscribers (never part of integration_events).

An :class:`integration_events.instrumentation.Instrumentation` the demo project installs
(``INTEGRATION_EVENTS["INSTRUMENTATION"]``): before a sample context's handler runs, it looks at
the event's text fields, and when ``settings.DEMO_FAULT_INJECTION`` is true a marker there makes
the attempt fail, exactly as if the handler had raised (the instrumentation seam's contract):

- ``[flaky]`` (or ``+flaky@`` in an e-mail address): the first attempt raises
  :class:`DemoTransientError`; the retry succeeds.
- ``[poison]`` (or ``+poison@``): every attempt raises :class:`DemoPoisonError`, so the message
  ends up failed (a dead letter an admin can requeue, which fails again: it is poison).

``manage.py simulate`` puts these markers into a share of what it creates, so the admin has
retries and failures to show; you can type them into the admin's forms too. The markers live in
the data, not in a process's memory, so the qcluster process that runs the handlers sees the
same intent as the process that published the event. The sample apps know nothing of it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.conf import settings

from integration_events.context import Delivery
from integration_events.instrumentation import Instrumentation

FLAKY_MARKERS = ("[flaky]", "+flaky@")
POISON_MARKERS = ("[poison]", "+poison@")
# The demo's bounded contexts (their subscriber groups): the probe app of the tests is left alone.
SAMPLE_GROUPS = ("accounts", "equipment", "files")


class DemoTransientError(RuntimeError):
    """A simulated transient failure (a mail server that is briefly down)."""


class DemoPoisonError(RuntimeError):
    """A simulated failure that no retry fixes."""


def _texts(event: Any) -> list[str]:
    if event is None:
        return []
    return [value for value in event.model_dump().values() if isinstance(value, str)]


class DemoFaults(Instrumentation):
    """Fails attempts of the sample contexts' handlers on events marked [flaky] or [poison]."""

    @contextmanager
    def attempt(self, delivery: Delivery) -> Iterator[None]:
        self.inject(delivery)
        yield

    @staticmethod
    def inject(delivery: Delivery) -> None:
        context = delivery.context
        if context.group not in SAMPLE_GROUPS or not getattr(
                settings, "DEMO_FAULT_INJECTION", False):
            return
        where = f"(group {context.group}, attempt {context.attempt})"
        for subject in _texts(delivery.event):
            if any(marker in subject for marker in POISON_MARKERS):
                raise DemoPoisonError(f"demo poison message for {subject!r} {where}")
            if any(marker in subject for marker in FLAKY_MARKERS) and context.attempt <= 1:
                raise DemoTransientError(f"demo transient failure for {subject!r} {where}")
