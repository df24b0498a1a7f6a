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


class InvalidHeaders(InvalidMessage):
    """The stored headers are not a JSON object (a tampered or corrupt row)."""


class HopLimitExceeded(PermanentFailure):
    """An event chain grew past MAX_HOPS: a handler publishing in reply to its own events."""


class UnknownTopic(IntegrationEventsError):
    """No event class is registered for the message's topic in this process (retried: a newer
    deployment may know it)."""


class NoHandler(IntegrationEventsError):
    """A received message's group has no handler for its topic in this process (retried by
    the unknown-topic rule: a newer deployment may have one)."""


class LeaseExpired(IntegrationEventsError):
    """The worker that took an attempt stopped renewing its claim (killed, crashed, or hung
    past the task timeout); recorded by the sweep. The row is then claimed alone."""


class RetryLater(IntegrationEventsError):
    """Raise from a handler to be retried no sooner than ``retry_after`` seconds (say, a
    Retry-After from an outside system). Any exception with a numeric or timedelta
    ``retry_after`` attribute is honoured the same way; the backoff still applies if longer."""

    def __init__(self, message: str = "", *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class GroupUnavailable(IntegrationEventsError):
    """Raise from a handler (or a batch handler) when the outside system the whole group
    talks to is down (a broker that refuses connections): the rows go back unstarted with
    their attempt given back, and the group is not claimed again for ``retry_after`` seconds
    (doubling while it stays down), so an outage dead-letters nothing. Its messages still
    fail by age if the subscriber's retry policy has a ``max_age``."""

    def __init__(self, message: str = "", *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class LeaseLost(IntegrationEventsError):
    """The worker's claim on a message expired and another worker took it over; this worker's
    outcome is discarded."""
