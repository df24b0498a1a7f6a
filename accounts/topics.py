"""Topics the accounts context publishes. Other contexts subscribe with these constants."""

from __future__ import annotations

from enum import StrEnum


class AccountsTopics(StrEnum):
    USER_REGISTERED = "accounts.user-registered"
    USER_DELETED = "accounts.user-deleted"
