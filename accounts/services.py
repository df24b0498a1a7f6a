"""The commands of the accounts context. Each changes state and publishes its event in one
transaction, so the event exists if and only if the change committed.

Registration raises the domain event UserSignedUp: its handlers (``subscribers.py``) create
the profile and publish UserRegistered in the same transaction."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from integration_events import publish, raise_event

from .domain_events import UserSignedUp
from .events import UserDeleted

if TYPE_CHECKING:
    from django.contrib.auth.models import User


class AccountsError(Exception):
    """A command of the accounts context was refused."""


def register_user(
    *,
    username: str,
    email: str,
    password: str | None = None,
    display_name: str = "",
) -> User:
    """Create a user (with an unusable password if none is given) and publish UserRegistered."""
    user = get_user_model()(username=username, email=email)
    if password:
        user.set_password(password)
    else:
        user.set_unusable_password()
    return save_new_user(user, display_name=display_name)


def save_new_user(user: User, *, display_name: str = "") -> User:
    """Save a user built elsewhere (the admin's add form) and raise UserSignedUp, whose
    handlers create the profile and publish UserRegistered, all in one transaction."""
    if user.pk is not None:
        raise AccountsError(f"user {user.pk} is already registered")
    with transaction.atomic():
        user.save()
        raise_event(UserSignedUp(
            user_id=user.pk,
            username=user.get_username(),
            email=user.email,
            display_name=display_name or user.get_username(),
            registered_at=timezone.now(),
        ))
    return user


def delete_user(user_id: int) -> bool:
    """Delete a user and publish UserDeleted. Returns False if there was no such user."""
    with transaction.atomic():
        user = get_user_model().objects.select_for_update().filter(pk=user_id).first()
        if user is None:
            return False
        email = getattr(user, "email", "") or ""
        user.delete()
        publish(UserDeleted(user_id=user_id, email=email, deleted_at=timezone.now()))
    return True
