"""files' handlers: its domain events (keep each owner's storage usage, publish FileStored),
and other contexts' integration events (purge a deleted user's files, attach documents to
equipment)."""

from __future__ import annotations

import logging

from django.db.models import F

from accounts.events import UserDeleted
from accounts.topics import AccountsTopics
from equipment.events import EquipmentCheckedIn, EquipmentCreated
from equipment.topics import EquipmentTopics
from integration_events import MessageContext, domain_handler, publish, subscriber

from . import services
from .domain_events import FileAdded, FileRemoved
from .events import FileStored
from .models import FileKind, StorageUsage

logger = logging.getLogger(__name__)


# --- domain events: run inside the transaction that adds or deletes the file --------------

@domain_handler
def add_to_usage(event: FileAdded) -> None:
    """The owner stores one more file (generated documents have no owner)."""
    if event.owner_id is None:
        return
    grow = {"file_count": F("file_count") + 1, "total_bytes": F("total_bytes") + event.size}
    if not StorageUsage.objects.filter(owner_id=event.owner_id).update(**grow):
        StorageUsage.objects.get_or_create(owner_id=event.owner_id)
        StorageUsage.objects.filter(owner_id=event.owner_id).update(**grow)


@domain_handler
def announce_file_stored(event: FileAdded) -> None:
    """Tell the other contexts; the outbox row commits with the file's row."""
    publish(FileStored(
        file_id=event.file_id, kind=event.kind, name=event.name, size=event.size,
        owner_id=event.owner_id, equipment_id=event.equipment_id,
        occurred_at=event.occurred_at,
    ))


@domain_handler
def subtract_from_usage(event: FileRemoved) -> None:
    """The owner stores one file less; a user who owns nothing more has no usage row."""
    if event.owner_id is None:
        return
    usage = StorageUsage.objects.filter(owner_id=event.owner_id)
    usage.update(file_count=F("file_count") - 1, total_bytes=F("total_bytes") - event.size)
    usage.filter(file_count__lte=0).delete()


# --- integration events from other contexts: delivered after commit -----------------------


@subscriber(AccountsTopics.USER_DELETED)
def purge_deleted_user_files(event: UserDeleted, context: MessageContext) -> None:
    """Delete the user's files. Rows go in this handler's transaction; their content is
    deleted in its on_commit, so a handler that fails and rolls back deletes nothing."""
    count = services.purge_user_files(event.user_id)
    logger.info("user files purged user_id=%s count=%s message_id=%s", event.user_id, count,
                context.message_id)


@subscriber(EquipmentTopics.EQUIPMENT_CREATED)
def attach_manual(event: EquipmentCreated, context: MessageContext) -> None:
    """Generate the equipment's manual (the second group EquipmentCreated reaches)."""
    services.generate_file(
        source_message_id=context.message_id,
        name=f"Manual - {event.name}.txt",
        kind=FileKind.MANUAL,
        equipment_id=event.equipment_id,
        text=(
            f"{event.name}\n{'=' * len(event.name)}\n\nCategory: {event.category}\n"
            f"Equipment id: {event.equipment_id}\n\nHandle with care. Check it out before "
            "use and check it in when you are done.\n"
        ),
    )


@subscriber(EquipmentTopics.EQUIPMENT_CHECKED_IN)
def record_check_in(event: EquipmentCheckedIn, context: MessageContext) -> None:
    """Keep a check-in receipt with the equipment (not with the user, who may be gone)."""
    services.generate_file(
        source_message_id=context.message_id,
        name=f"Check-in receipt v{event.equipment_version}.txt",
        kind=FileKind.RECEIPT,
        equipment_id=event.equipment_id,
        text=(
            f"Equipment {event.equipment_id} checked in at {event.occurred_at.isoformat()} "
            f"from user {event.user_id} (reason: {event.reason}).\n"
        ),
    )
