"""Faults injected into a real qcluster's bridge sending (through the instrumentation seam,
INSTRUMENTATION via IE_INSTRUMENTATION in tests/settings.py)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from integration_events.context import Delivery
from integration_events.instrumentation import Instrumentation

POISON = 13


class KillOnPoison(Instrumentation):
    """A batch that holds the event with n == POISON kills its worker process once the
    batch has been published, before its claim commits: every time it is sent."""

    @contextmanager
    def batch(self, group: str, deliveries: Sequence[Delivery],
              results: list[BaseException | None]) -> Iterator[None]:
        yield
        # A bridge's subscription is raw: the event is in the stored content.
        if any(json.loads(d.message.content).get("n") == POISON for d in deliveries):
            os._exit(3)
