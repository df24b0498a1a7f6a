"""Domain events of the accounts context: raised inside its transactions and handled inside
it (``subscribers.py``), never seen by other contexts."""

from __future__ import annotations

from datetime import datetime

from integration_events import DomainEvent


class UserSignedUp(DomainEvent):
    """A user account was saved; its handlers create the profile and publish UserRegistered
    in the same transaction, so a user never exists without either."""

    user_id: int
    username: str
    email: str
    display_name: str
    registered_at: datetime
