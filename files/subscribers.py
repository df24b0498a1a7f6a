"""files' handlers: purge a deleted user's files, attach documents to equipment."""

from __future__ import annotations

import logging

from accounts.events import UserDeleted
from accounts.topics import AccountsTopics
from equipment.events import EquipmentCheckedIn, EquipmentCreated
from equipment.topics import EquipmentTopics
from integration_events import MessageContext, subscriber
from project.faults import inject_demo_fault

from . import services
from .models import FileKind

logger = logging.getLogger("integration_events")


@subscriber(AccountsTopics.USER_DELETED)
def purge_deleted_user_files(event: UserDeleted, context: MessageContext) -> None:
    """Delete the user's files. Rows go in this handler's transaction; their content is
    deleted in its on_commit, so a handler that fails and rolls back deletes nothing."""
    inject_demo_fault(context, event.email)
    count = services.purge_user_files(event.user_id)
    logger.info("user files purged user_id=%s count=%s message_id=%s", event.user_id, count,
                context.message_id)


@subscriber(EquipmentTopics.EQUIPMENT_CREATED)
def attach_manual(event: EquipmentCreated, context: MessageContext) -> None:
    """Generate the equipment's manual (the second group EquipmentCreated reaches)."""
    inject_demo_fault(context, event.name)
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
