from __future__ import annotations

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
