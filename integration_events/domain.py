"""Domain events: raised and handled synchronously, in process, inside one context's
transaction.

Integration events (``events.py``) cross contexts after commit, through the outbox. Domain
events stay inside the context that raises them and run before the commit::

    class StockRecounted(DomainEvent):          # no topic: the class is the key
        category: str

    @domain_handler                              # in the app's subscribers.py
    def refresh_shelf(event: StockRecounted) -> None: ...

    with transaction.atomic():
        ...
        raise_event(StockRecounted(category="tools"))   # every handler has run here

Handlers run in registration order (the order their modules are imported: autodiscovery
follows INSTALLED_APPS, then the order of definition in each module). A handler's exception
propagates out of ``raise_event`` and marks the transaction for rollback, so the operation
that raised the event does not commit, even if the caller catches the exception.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from django.core.exceptions import ImproperlyConfigured
from django.db import DEFAULT_DB_ALIAS, transaction
from pydantic import BaseModel, ConfigDict

from .events import IntegrationEvent
from .exceptions import IntegrationEventsError

__all__ = [
    "DomainEvent",
    "DomainEventError",
    "DomainHandler",
    "capture_domain_events",
    "domain_handler",
    "forget_domain_handler",
    "handlers_for",
    "raise_event",
]

logger = logging.getLogger("integration_events")

HandlerT = TypeVar("HandlerT", bound=Callable[..., Any])


class DomainEventError(IntegrationEventsError):
    """raise_event() was called wrongly: not with a domain event, or outside a transaction."""


class DomainEvent(BaseModel):
    """Base class of domain events: immutable pydantic models with no topic.

    A domain event never leaves the process, so it is not serialised and has no topic or
    version; its class is what handlers register for. Unknown fields are an error (the
    raiser and the handlers are deployed together, so a mismatch is a bug, not an old peer).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        if "topic" in kwargs:
            raise TypeError(
                f"{cls.__qualname__}: a domain event has no topic (its class is the key). "
                "For an event other contexts receive, subclass IntegrationEvent instead."
            )
        super().__init_subclass__(**kwargs)
        if issubclass(cls, IntegrationEvent):
            raise TypeError(
                f"{cls.__qualname__} derives from both DomainEvent and IntegrationEvent: an "
                "event is one or the other. Raise a domain event and publish an integration "
                "event from its handler."
            )


@dataclass(frozen=True)
class DomainHandler:
    """One registered handler of one domain event class."""

    event_type: type[DomainEvent]
    handler: Callable[[Any], Any]

    @property
    def dotted_path(self) -> str:
        return f"{self.handler.__module__}.{self.handler.__qualname__}"


# event class -> its handlers, in registration order.
_handlers: dict[type[DomainEvent], list[DomainHandler]] = {}
# Lists that capture_domain_events() is filling (empty unless a test is capturing).
_captures: list[list[DomainEvent]] = []


def _handled_type(handler: Callable[..., Any]) -> type[DomainEvent]:
    where = f"{handler.__module__}.{handler.__qualname__}"
    if inspect.iscoroutinefunction(handler):
        raise ImproperlyConfigured(
            f"domain handler {where} is async: domain handlers run synchronously in the "
            "caller's transaction; make it a plain function"
        )
    params = list(inspect.signature(handler).parameters.values())
    if len(params) != 1 or params[0].kind not in (params[0].POSITIONAL_ONLY,
                                                  params[0].POSITIONAL_OR_KEYWORD):
        raise ImproperlyConfigured(f"domain handler {where} must take one parameter, the event")
    try:
        annotation = typing.get_type_hints(handler).get(params[0].name)
    except Exception as exc:
        raise ImproperlyConfigured(
            f"domain handler {where}: the annotation {params[0].annotation!r} does not resolve "
            f"({exc}); import the event class at run time, not only under TYPE_CHECKING"
        ) from exc
    if isinstance(annotation, type) and issubclass(annotation, IntegrationEvent):
        raise ImproperlyConfigured(
            f"domain handler {where} takes {annotation.__qualname__}, an integration event: "
            f"subscribe to it with @subscriber({annotation.__qualname__}'s topic) instead"
        )
    if not (isinstance(annotation, type) and issubclass(annotation, DomainEvent)):
        raise ImproperlyConfigured(
            f"domain handler {where} must annotate its parameter with a DomainEvent subclass "
            f"(the event it handles), e.g. def {handler.__name__}(event: EquipmentAdded)"
        )
    if annotation is DomainEvent:
        raise ImproperlyConfigured(
            f"domain handler {where} is annotated with DomainEvent itself; name the event class"
        )
    return annotation


def domain_handler(handler: HandlerT) -> HandlerT:
    """Register ``handler`` for the domain event class its parameter is annotated with.

    Put handlers in the ``subscribers`` module of the app that owns the event: those modules
    are imported at start-up (autodiscovery), and a system check (integration_events.E020)
    rejects a handler in another app. The handler runs inside the caller's transaction;
    raise to refuse the operation.
    """
    event_type = _handled_type(handler)
    entry = DomainHandler(event_type, handler)
    registered = _handlers.setdefault(event_type, [])
    for index, existing in enumerate(registered):
        # A module imported again (importlib.reload) replaces its handler in place.
        if existing.dotted_path == entry.dotted_path:
            registered[index] = entry
            return handler
    registered.append(entry)
    return handler


def handlers_for(event_type: type[DomainEvent]) -> list[DomainHandler]:
    """The handlers of ``event_type``, in the order raise_event() runs them."""
    return list(_handlers.get(event_type, ()))


def all_domain_handlers() -> list[DomainHandler]:
    return [h for handlers in _handlers.values() for h in handlers]


def forget_domain_handler(handler: Callable[..., Any]) -> None:
    """Unregister ``handler`` (for tests that register handlers locally)."""
    for event_type in list(_handlers):
        kept = [h for h in _handlers[event_type] if h.handler is not handler]
        if kept:
            _handlers[event_type] = kept
        else:
            del _handlers[event_type]


def raise_event(event: DomainEvent, *, using: str | None = None) -> None:
    """Run every handler of ``event``'s class now, in the caller's transaction.

    Must be called inside ``transaction.atomic()`` on ``using`` (the default database
    unless given): the handlers' writes commit or roll back with the operation that raised
    the event. When a handler raises, the exception propagates after the transaction has
    been marked for rollback, so the operation never commits; wrap the call in its own
    ``transaction.atomic()`` to catch the error and carry on without the handlers' writes.
    """
    if not isinstance(event, DomainEvent):
        if isinstance(event, IntegrationEvent):
            raise DomainEventError(
                f"raise_event() got {type(event).__qualname__}, an integration event: "
                "publish() it instead (it is delivered to other contexts after commit)"
            )
        raise DomainEventError(
            f"raise_event() takes a DomainEvent instance, got {type(event).__qualname__}"
        )
    alias = using or DEFAULT_DB_ALIAS
    if not transaction.get_connection(alias).in_atomic_block:
        raise DomainEventError(
            f"raise_event({type(event).__qualname__}) was called outside a transaction on "
            f"database {alias!r}: call it inside transaction.atomic() together with the change "
            "it reports, so that a failing handler can roll the change back"
        )
    for capture in _captures:
        capture.append(event)
    for entry in tuple(_handlers.get(type(event), ())):
        try:
            entry.handler(event)
        except BaseException as exc:
            transaction.set_rollback(True, using=alias)
            logger.info("domain handler raised event=%s handler=%s error=%s",
                        type(event).__qualname__, entry.dotted_path, type(exc).__name__)
            raise


@contextlib.contextmanager
def capture_domain_events() -> Iterator[list[DomainEvent]]:
    """Collect every domain event raised inside the block (handlers still run)::

        with capture_domain_events() as raised:
            services.change_status(pk, EquipmentStatus.MAINTENANCE)
        assert [type(e) for e in raised] == [EquipmentStatusSet]
    """
    captured: list[DomainEvent] = []
    _captures.append(captured)
    try:
        yield captured
    finally:
        _captures.remove(captured)
