"""Domain events of the files context: raised inside its transactions and handled inside it
(``subscribers.py``), never seen by other contexts. Their handlers keep each owner's storage
usage exact and publish FileStored, in the transaction that stores or deletes the file."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from integration_events import DomainEvent


class FileAdded(DomainEvent):
    """A file's row was saved (uploaded, or generated for a piece of equipment)."""

    file_id: UUID
    kind: str
    name: str
    size: int
    owner_id: int | None = None
    equipment_id: UUID | None = None
    occurred_at: datetime


class FileRemoved(DomainEvent):
    """A file's row was deleted (its content goes after commit)."""

    file_id: UUID
    size: int
    owner_id: int | None = None
