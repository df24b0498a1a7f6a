"""The pydantic base class of integration events and the topic -> event class registry."""

from __future__ import annotations

import enum
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict


class EventDeclaration:
    """Where a topic was declared: kept so that system checks can report duplicates and
    topics written inline instead of taken from a topics constant."""

    def __init__(self, event_class: type[IntegrationEvent], topic_was_constant: bool) -> None:
        self.event_class = event_class
        self.topic_was_constant = topic_was_constant

    @property
    def dotted_path(self) -> str:
        return f"{self.event_class.__module__}.{self.event_class.__qualname__}"


# topic -> every class that declared it (more than one is a system check error, E002).
_declarations: dict[str, list[EventDeclaration]] = {}


class IntegrationEvent(BaseModel):
    """Base class of integration events: immutable, JSON-only, one topic per class.

    Declare the topic from your app's topics constants::

        class EquipmentCreated(IntegrationEvent, topic=EquipmentTopics.EQUIPMENT_CREATED):
            equipment_id: UUID
            name: str

    Unknown fields in a stored payload are ignored, so a producer can add a field without
    breaking consumers that run older code. Removing or retyping a field is a breaking change:
    publish a new topic (or a new version) instead.

    ``ordering_key="equipment_id"`` names the field whose value (as a string) is the event's
    ordering key: events of one key run in commit order in each group (docs/ordering.md).
    Subclasses inherit it; ``publish(..., ordering_key=...)`` overrides it.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    topic: ClassVar[str] = ""
    # Raise when you change the event's shape in a compatible way; consumers that replicate
    # state can compare it. Stored in the message headers as "event-version".
    version: ClassVar[int] = 1
    # The field whose value is the ordering key ("" for unkeyed events).
    ordering_key_field: ClassVar[str] = ""

    @classmethod
    def __pydantic_init_subclass__(cls, topic: str | None = None,
                                   ordering_key: str | None = None, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        if ordering_key is not None:
            _declare_ordering_key(cls, ordering_key)
        if topic is None:
            # An abstract intermediate base (no topic) is allowed; concrete events set one.
            return
        if not isinstance(topic, str) or not str(topic):
            raise TypeError(f"{cls.__qualname__}: topic must be a non-empty string")
        value = str(topic.value) if isinstance(topic, enum.Enum) else str(topic)
        cls.topic = value
        _declarations.setdefault(value, []).append(
            EventDeclaration(cls, topic_was_constant=isinstance(topic, enum.Enum))
        )

    def __init_subclass__(cls, topic: str | None = None, ordering_key: str | None = None,
                          **kwargs: Any) -> None:
        # pydantic passes class keywords on to __pydantic_init_subclass__; swallow "topic" and
        # "ordering_key" here so that object.__init_subclass__ does not reject them.
        super().__init_subclass__(**kwargs)

    def ordering_key_value(self) -> str | None:
        """The value of the class's ordering key field as a string (None when the class
        names none). Raises ValueError when the field holds None."""
        name = type(self).ordering_key_field
        if not name:
            return None
        value = getattr(self, name)
        if value is None:
            raise ValueError(
                f"{type(self).__qualname__}.{name} is None, and it is the event's ordering "
                "key: give it a value, or pass publish(..., ordering_key=...) explicitly")
        return str(value.value) if isinstance(value, enum.Enum) else str(value)


def _declare_ordering_key(cls: type[IntegrationEvent], field: str) -> None:
    if not isinstance(field, str) or not field:
        raise TypeError(f"{cls.__qualname__}: ordering_key must name one of its fields")
    if field not in cls.model_fields:
        known = ", ".join(sorted(cls.model_fields)) or "none"
        raise TypeError(
            f"{cls.__qualname__}: ordering_key={field!r} is not one of its fields ({known})")
    cls.ordering_key_field = field


def event_class_for(topic: str) -> type[IntegrationEvent] | None:
    """The event class registered for ``topic`` (the first one, if several declared it)."""
    decls = _declarations.get(topic)
    return decls[0].event_class if decls else None


def declarations() -> dict[str, list[EventDeclaration]]:
    """Every declared topic with the classes that declared it (read-only use)."""
    return _declarations


def known_topics() -> list[str]:
    return sorted(_declarations)


def forget_event_class(event_class: type[IntegrationEvent]) -> None:
    """Remove a class from the registry (tests that define events locally use this)."""
    decls = _declarations.get(event_class.topic, [])
    decls[:] = [d for d in decls if d.event_class is not event_class]
    if not decls:
        _declarations.pop(event_class.topic, None)
