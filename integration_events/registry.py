"""@subscriber: the registry of handlers, one per (topic, group), and its autodiscovery."""

from __future__ import annotations

import enum
import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.apps import apps
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import autodiscover_modules

from .context import MessageContext
from .events import IntegrationEvent
from .retry import RetryStrategy

__all__ = ["MessageContext", "Subscription", "subscriber", "subscriptions", "autodiscover"]

Handler = Callable[..., Any]


@dataclass(frozen=True)
class Subscription:
    """One group's handler for one topic."""

    topic: str
    group: str
    handler: Handler
    event_type: type[IntegrationEvent] | None
    wants_context: bool
    atomic: bool
    max_attempts: int | None
    retry_base_delay: float | None
    retry_max_delay: float | None
    topic_was_constant: bool

    @property
    def dotted_path(self) -> str:
        return f"{self.handler.__module__}.{self.handler.__qualname__}"

    def retry_strategy(self) -> RetryStrategy:
        from .conf import get_settings

        base = get_settings().retry_strategy()
        return RetryStrategy(
            max_attempts=self.max_attempts or base.max_attempts,
            base_delay=base.base_delay if self.retry_base_delay is None else self.retry_base_delay,
            max_delay=base.max_delay if self.retry_max_delay is None else self.retry_max_delay,
            jitter=base.jitter,
        )


# topic -> group -> subscription
_subscriptions: dict[str, dict[str, Subscription]] = {}


def _event_type_of(handler: Handler) -> tuple[type[IntegrationEvent] | None, bool]:
    sig = inspect.signature(handler)
    params = [
        p for p in sig.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if not params or len(params) > 2:
        raise ImproperlyConfigured(
            f"subscriber {handler.__module__}.{handler.__qualname__} must take "
            "(event) or (event, context)"
        )
    try:
        hints = typing.get_type_hints(handler)
    except Exception:  # an annotation that cannot be resolved: reported by check E003
        hints = {}
    event_type = hints.get(params[0].name)
    if not (isinstance(event_type, type) and issubclass(event_type, IntegrationEvent)):
        event_type = None
    return event_type, len(params) == 2


def subscriber(
    topic: str,
    *,
    group: str | None = None,
    atomic: bool = True,
    max_attempts: int | None = None,
    retry_base_delay: float | None = None,
    retry_max_delay: float | None = None,
) -> Callable[[Handler], Handler]:
    """Register the decorated function as ``group``'s handler for ``topic``.

    The event type is taken from the annotation of the first parameter and the payload is
    validated with it. A second parameter, if any, receives the MessageContext. ``group``
    defaults to the label of the app that defines the handler. With ``atomic=True`` (the
    default) the handler's database writes commit together with the inbox row's status, so
    they happen once however often the message is delivered; set ``atomic=False`` for a
    handler that only calls outside systems (it must then be idempotent itself).
    ``max_attempts`` and the retry delays override the INTEGRATION_EVENTS defaults.
    """
    topic_value = str(topic.value) if isinstance(topic, enum.Enum) else str(topic)
    if not topic_value:
        raise ImproperlyConfigured("subscriber(topic): the topic must not be empty")
    if max_attempts is not None and max_attempts < 1:
        raise ImproperlyConfigured("subscriber(max_attempts=...) must be at least 1")

    def decorator(handler: Handler) -> Handler:
        event_type, wants_context = _event_type_of(handler)
        group_name = group
        if group_name is None:
            app = apps.get_containing_app_config(handler.__module__)
            if app is None:
                raise ImproperlyConfigured(
                    f"subscriber {handler.__module__}.{handler.__qualname__}: not inside an "
                    "installed app, so the group cannot default to the app label; pass group="
                )
            group_name = app.label
        sub = Subscription(
            topic=topic_value,
            group=group_name,
            handler=handler,
            event_type=event_type,
            wants_context=wants_context,
            atomic=atomic,
            max_attempts=max_attempts,
            retry_base_delay=retry_base_delay,
            retry_max_delay=retry_max_delay,
            topic_was_constant=isinstance(topic, enum.Enum),
        )
        groups = _subscriptions.setdefault(topic_value, {})
        existing = groups.get(group_name)
        if existing is not None and existing.dotted_path != sub.dotted_path:
            raise ImproperlyConfigured(
                f"group {group_name!r} has two handlers for topic {topic_value!r}: "
                f"{existing.dotted_path} and {sub.dotted_path}. A group gets one copy of each "
                "message, so it can have one handler per topic; give one of them another group="
            )
        groups[group_name] = sub
        return handler

    return decorator


def subscriptions(topic: str) -> dict[str, Subscription]:
    """The groups subscribed to ``topic`` and their subscriptions."""
    return _subscriptions.get(topic, {})


def all_subscriptions() -> list[Subscription]:
    return [s for groups in _subscriptions.values() for s in groups.values()]


def get_subscription(topic: str, group: str) -> Subscription | None:
    return _subscriptions.get(topic, {}).get(group)


def unregister(topic: str, group: str) -> None:
    """Remove a subscription (for tests that register handlers locally)."""
    topic_value = str(topic.value) if isinstance(topic, enum.Enum) else str(topic)
    groups = _subscriptions.get(topic_value, {})
    groups.pop(group, None)
    if not groups:
        _subscriptions.pop(topic_value, None)


def autodiscover() -> None:
    """Import the ``subscribers`` module of every installed app (and ``events``, so that
    every topic a subscriber names is declared even if nothing imported it yet)."""
    autodiscover_modules("events")
    autodiscover_modules("subscribers")
