"""Integration events of the files context."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from integration_events import IntegrationEvent

from .topics import FilesTopics


class FileStored(IntegrationEvent, topic=FilesTopics.FILE_STORED):
    """A file was stored (uploaded, or generated for a piece of equipment)."""

    file_id: UUID
    kind: str
    name: str
    size: int
    owner_id: int | None = None
    equipment_id: UUID | None = None
    occurred_at: datetime


class UserFilesPurged(IntegrationEvent, topic=FilesTopics.USER_FILES_PURGED):
    """Every file of a deleted user was removed."""

    user_id: int
    file_count: int
    occurred_at: datetime
