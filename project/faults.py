"""Demo-only fault injection for the sample subscribers (never part of integration_events).

The sample handlers call :func:`inject_demo_fault` with a piece of the event's data (an
equipment name, an e-mail address). When ``settings.DEMO_FAULT_INJECTION`` is true, a subject
containing a marker makes the handler fail:

- ``[flaky]`` (or ``+flaky@`` in an e-mail address): the first attempt raises
  :class:`DemoTransientError`; the retry succeeds.
- ``[poison]`` (or ``+poison@``): every attempt raises :class:`DemoPoisonError`, so the
  message ends up failed (a dead letter an admin can requeue, which fails again: it is poison).

``manage.py simulate`` puts these markers into a share of what it creates, so the admin has
retries and failures to show; you can type them into the admin's forms too. The markers live
in the data, not in a process's memory, so the qcluster process that runs the handlers sees
the same intent as the process that published the event.
"""

from __future__ import annotations

from django.conf import settings

from integration_events import MessageContext

FLAKY_MARKERS = ("[flaky]", "+flaky@")
POISON_MARKERS = ("[poison]", "+poison@")


class DemoTransientError(RuntimeError):
    """A simulated transient failure (a mail server that is briefly down)."""


class DemoPoisonError(RuntimeError):
    """A simulated failure that no retry fixes."""


def inject_demo_fault(context: MessageContext | None, subject: str) -> None:
    """Raise if the demo asks for a failure on ``subject``; a no-op unless
    ``settings.DEMO_FAULT_INJECTION`` is true."""
    if not getattr(settings, "DEMO_FAULT_INJECTION", False):
        return
    where = f"(group {context.group}, attempt {context.attempt})" if context else ""
    if any(marker in subject for marker in POISON_MARKERS):
        raise DemoPoisonError(f"demo poison message for {subject!r} {where}".strip())
    flaky = any(marker in subject for marker in FLAKY_MARKERS)
    if flaky and (context is None or context.attempt <= 1):
        raise DemoTransientError(f"demo transient failure for {subject!r} {where}".strip())
