"""Durable, after-commit, asynchronous integration events for Django.

Public API::

    from integration_events import IntegrationEvent, publish, publish_many, subscriber
    from integration_events import DomainEvent, domain_handler, raise_event
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = [
    "DomainEvent",
    "IntegrationEvent",
    "MessageContext",
    "domain_handler",
    "publish",
    "publish_many",
    "raise_event",
    "subscriber",
]

if TYPE_CHECKING:
    from .domain import DomainEvent, domain_handler, raise_event
    from .events import IntegrationEvent
    from .publisher import publish, publish_many
    from .registry import MessageContext, subscriber


def __getattr__(name: str) -> Any:
    # Lazy so that `import integration_events` in settings or apps.py does not import models
    # before the app registry is ready.
    if name == "IntegrationEvent":
        from .events import IntegrationEvent

        return IntegrationEvent
    if name in ("publish", "publish_many"):
        from . import publisher

        return getattr(publisher, name)
    if name in ("subscriber", "MessageContext"):
        from . import registry

        return getattr(registry, name)
    if name in ("DomainEvent", "domain_handler", "raise_event"):
        from . import domain

        return getattr(domain, name)
    raise AttributeError(f"module 'integration_events' has no attribute {name!r}")
