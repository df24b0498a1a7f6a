"""Domain events of the test app (tests register their handlers locally)."""

from __future__ import annotations

from integration_events import DomainEvent


class ProbeNoted(DomainEvent):
    """Something happened inside the test app; handlers decide what follows."""

    n: int
    text: str = ""


class ProbeCleared(DomainEvent):
    """A second event class, to show that handlers are keyed by class."""

    n: int
