"""The commands of the files context. Database rows change and events are raised or
published in one transaction; stored content is deleted only after that transaction commits.

Adding and deleting a file raise the domain events FileAdded / FileRemoved: their handlers
(``subscribers.py``) keep the owner's storage usage and publish FileStored in the same
transaction."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from functools import partial
from uuid import UUID

from django.core.files.base import ContentFile, File
from django.core.files.storage import default_storage
from django.db import transaction
from django.utils import timezone

from integration_events import publish, raise_event

from .domain_events import FileAdded, FileRemoved
from .events import UserFilesPurged
from .models import FileKind, StoredFile


def _delete_content(names: list[str]) -> None:
    for name in names:
        # Missing content is fine: deleting twice (a redelivery) must be a no-op.
        default_storage.delete(name)


def _raise_added(stored: StoredFile) -> None:
    raise_event(FileAdded(
        file_id=stored.pk, kind=stored.kind, name=stored.name, size=stored.size,
        owner_id=stored.owner_id, equipment_id=stored.equipment_id,
        occurred_at=stored.created_at,
    ))


def store_file(
    *, name: str, content: File[bytes] | bytes, owner_id: int | None = None,
    equipment_id: UUID | None = None, kind: FileKind = FileKind.UPLOAD,
) -> StoredFile:
    """Store an uploaded file (FileAdded: its owner's usage grows, FileStored is published)."""
    upload: File[bytes] = ContentFile(content, name=name) if isinstance(content, bytes) else content
    with transaction.atomic():
        stored = StoredFile(name=name, kind=kind, owner_id=owner_id, equipment_id=equipment_id)
        stored.content.save(name, upload, save=False)
        stored.size = stored.content.size
        stored.save(force_insert=True)
        _raise_added(stored)
    return stored


def generate_file(
    *, source_message_id: UUID, name: str, text: str, kind: FileKind,
    equipment_id: UUID | None = None, owner_id: int | None = None,
) -> StoredFile | None:
    """Store a generated document once per source message (None if it already exists).

    The content's name is derived from the message id and any leftover of an earlier,
    rolled-back attempt is replaced, so retries leave one file, not one per attempt.
    """
    with transaction.atomic():
        if StoredFile.objects.filter(source_message_id=source_message_id).exists():
            return None
        path = f"generated/{kind}/{source_message_id}.txt"
        if default_storage.exists(path):
            default_storage.delete(path)
        saved = default_storage.save(path, ContentFile(text.encode()))
        stored = StoredFile.objects.create(
            id=uuid.uuid4(), kind=kind, name=name, content=saved, size=len(text.encode()),
            owner_id=owner_id, equipment_id=equipment_id, source_message_id=source_message_id,
        )
        _raise_added(stored)
    return stored


def delete_files(files: Iterable[StoredFile]) -> int:
    """Delete files: rows now (FileRemoved for each), content after commit (a rollback keeps
    both)."""
    with transaction.atomic():
        ids = [f.pk for f in files]
        rows = list(StoredFile.objects.select_for_update().filter(pk__in=ids)
                    .values_list("pk", "owner_id", "size", "content"))
        count, _ = StoredFile.objects.filter(pk__in=ids).delete()
        for pk, owner_id, size, _name in rows:
            raise_event(FileRemoved(file_id=pk, owner_id=owner_id, size=size))
        transaction.on_commit(partial(_delete_content, [name for *_, name in rows if name]))
    return count


def purge_user_files(user_id: int) -> int:
    """Delete every file ``user_id`` owns, content after commit, and publish UserFilesPurged
    if there was any (so a second call is a no-op)."""
    with transaction.atomic():
        count = delete_files(StoredFile.objects.filter(owner_id=user_id))
        if count:
            publish(UserFilesPurged(user_id=user_id, file_count=count,
                                    occurred_at=timezone.now()))
    return count
