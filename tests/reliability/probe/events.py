from __future__ import annotations

from integration_events import IntegrationEvent

from .topics import ReliabilityTopics


class LoadApplied(IntegrationEvent, topic=ReliabilityTopics.LOAD_APPLIED):
    """The reliability suite's load. behaviour (see subscribers.behave) says what the handlers
    do after writing their Effect row; text and blob carry unicode, control characters and
    bulk through every layer (the handler stores their digest)."""

    n: int
    behaviour: str = "ok"
    only_group: str = ""
    text: str = ""
    blob: str = ""
