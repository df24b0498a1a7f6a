"""Integration events of the accounts context (its public contract towards other contexts)."""

from __future__ import annotations

from datetime import datetime

from integration_events import IntegrationEvent

from .topics import AccountsTopics


class UserRegistered(IntegrationEvent, topic=AccountsTopics.USER_REGISTERED):
    """A user account was created."""

    user_id: int
    email: str
    display_name: str
    registered_at: datetime


class UserDeleted(IntegrationEvent, topic=AccountsTopics.USER_DELETED):
    """A user account was deleted: other contexts drop or hand back what that user owned."""

    user_id: int
    email: str
    deleted_at: datetime
