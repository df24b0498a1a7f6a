"""Exceptions raised by integration_events. All derive from IntegrationEventsError."""

from __future__ import annotations


class IntegrationEventsError(Exception):
    """Base class of every error this package raises (configuration errors excepted,
    which are Django's ImproperlyConfigured)."""


class PermanentFailure(IntegrationEventsError):
    """Raise from a handler to fail its message at once, without further retries.

    Use it for input the handler can never process (a reference to something that does not
    exist and never will); anything else should raise normally and be retried.
    """


class InvalidMessage(PermanentFailure):
    """The stored content does not parse as JSON or fails validation against the event class."""


class HopLimitExceeded(PermanentFailure):
    """An event chain grew past MAX_HOPS: a handler publishing in reply to its own events."""


class UnknownTopic(IntegrationEventsError):
    """No event class is registered for the message's topic in this process (retried: a newer
    deployment may know it)."""


class LeaseLost(IntegrationEventsError):
    """The worker's claim on a message expired and another worker took it over; this worker's
    outcome is discarded."""
