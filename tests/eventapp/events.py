from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import field_validator

from integration_events import IntegrationEvent

from .topics import ProbeTopics


class ProbeHappened(IntegrationEvent, topic=ProbeTopics.PROBE_HAPPENED):
    """A test event whose payload tells the handlers how to behave.

    behaviour: "ok"; "fail:N" (raise on the first N attempts); "fail" (always raise);
    "permanent" (raise PermanentFailure); "sleep:S" (sleep S seconds, then succeed);
    "exit" (os._exit the worker); "base" (raise a BaseException that is not an Exception);
    "hang" (sleep for an hour). only_group limits the behaviour to one group.
    """

    n: int
    behaviour: str = "ok"
    only_group: str = ""
    text: str = ""


class ChainLinked(IntegrationEvent, topic=ProbeTopics.CHAIN_LINKED):
    depth: int


class LonelyHappened(IntegrationEvent, topic=ProbeTopics.LONELY_HAPPENED):
    """Declared, but nobody subscribes to it."""

    n: int


class Stamped(IntegrationEvent, topic=ProbeTopics.STAMPED):
    """A consumer-side validator that only works on the publisher's side: at publish time
    ``at`` is a datetime, but a consumer gets the JSON string and ``.astimezone()`` raises
    AttributeError (not a ValueError, so pydantic does not turn it into a ValidationError)."""

    n: int
    at: datetime

    @field_validator("at", mode="before")
    @classmethod
    def _in_utc(cls, value: Any) -> Any:
        return value.astimezone(UTC)


class CommitChained(IntegrationEvent, topic=ProbeTopics.COMMIT_CHAINED):
    """Its handler publishes the next link from transaction.on_commit (the README's advice for
    side effects): the hop limit must still stop the chain."""

    depth: int
    label: str = ""


class Paced(IntegrationEvent, topic=ProbeTopics.PACED_SLOW):
    """Flow-control probes: the handler journals its start and end and sleeps ``sleep``."""

    n: int
    sleep: float = 0.0


class PacedFast(Paced, topic=ProbeTopics.PACED_FAST):
    pass


class Limited(Paced, topic=ProbeTopics.LIMITED):
    pass


class Rated(Paced, topic=ProbeTopics.RATED):
    pass


class Pausable(Paced, topic=ProbeTopics.PAUSABLE):
    pass


class Stepped(IntegrationEvent, topic=ProbeTopics.STEPPED, ordering_key="key"):
    """Ordering probes: step ``step`` of ``key``; its handlers journal a Step row and act on
    ``behaviour`` as ProbeHappened's do ("fail:1" fails the first attempt)."""

    key: str
    step: int
    behaviour: str = "ok"
    only_group: str = ""
    publisher: str = ""
    n: int = 0
