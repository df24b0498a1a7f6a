"""What a pass did: one outcome per row, counted."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass


class Outcome(enum.StrEnum):
    """What happened to one claimed row in a pass."""

    DISPATCHED = "dispatched"
    """A published message was fanned out to its groups' inbox rows."""
    SUCCEEDED = "succeeded"
    """A handler ran and its inbox row (with its writes) committed as succeeded."""
    RETRIED = "retried"
    """The attempt failed; the row waits for its next attempt (backoff)."""
    FAILED = "failed"
    """The attempt failed for the last time: the row is a dead letter."""
    LOST = "lost"
    """The claim expired and another worker took the row over; this outcome was dropped."""


@dataclass
class PassStats:
    """Rows per outcome over one pass (or a task's passes)."""

    dispatched: int = 0
    succeeded: int = 0
    retried: int = 0
    failed: int = 0
    lost: int = 0

    def count(self, outcome: Outcome, n: int = 1) -> None:
        setattr(self, outcome.value, getattr(self, outcome.value) + n)

    @property
    def total(self) -> int:
        return self.dispatched + self.succeeded + self.retried + self.failed + self.lost

    def add(self, other: PassStats) -> PassStats:
        for outcome in Outcome:
            self.count(outcome, getattr(other, outcome.value))
        return self

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class SweepStats:
    released: int = 0
    dead: int = 0
    deleted_published: int = 0
    deleted_received: int = 0
    # Expired keyed dead letters left in place because later rows of their key wait on them.
    kept_blocking: int = 0
    # OrderingKey rows deleted: keys with no message left (integration_events.sweep).
    forgotten_keys: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)
