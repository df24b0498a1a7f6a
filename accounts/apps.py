from __future__ import annotations

from django.apps import AppConfig


class AccountsConfig(AppConfig):
    """The accounts context: who the users are. Publishes UserRegistered and UserDeleted."""

    name = "accounts"
    verbose_name = "Accounts"
    default_auto_field = "django.db.models.BigAutoField"
