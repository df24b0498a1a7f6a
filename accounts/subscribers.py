"""accounts' handlers: its domain event (a new user gets a profile and UserRegistered is
published), and the equipment context's check-outs and check-ins, to know what each user
holds."""

from __future__ import annotations

import logging
from uuid import UUID

from equipment.events import EquipmentCheckedIn, EquipmentCheckedOut
from equipment.topics import EquipmentTopics
from integration_events import MessageContext, domain_handler, publish, subscriber

from .domain_events import UserSignedUp
from .events import UserRegistered
from .models import EquipmentHolding, Profile

logger = logging.getLogger(__name__)


# --- domain events: run inside the transaction that saved the user ------------------------

@domain_handler
def create_profile(event: UserSignedUp) -> None:
    """Every user has a profile from the moment it exists."""
    Profile.objects.create(user_id=event.user_id, display_name=event.display_name,
                           registered_at=event.registered_at)


@domain_handler
def announce_user_registered(event: UserSignedUp) -> None:
    """Tell the other contexts; the outbox row commits with the user."""
    publish(UserRegistered(user_id=event.user_id, email=event.email,
                           display_name=event.display_name,
                           registered_at=event.registered_at))


# --- integration events from the equipment context: delivered after commit ---------------


def _record(equipment_id: UUID, user_id: int | None, version: int) -> None:
    holding, created = EquipmentHolding.objects.select_for_update().get_or_create(
        equipment_id=equipment_id,
        defaults={"user_id": user_id, "equipment_version": version},
    )
    if created or holding.equipment_version >= version:
        # A newer state is already known: this event arrived late (delivery is unordered).
        return
    holding.user_id = user_id
    holding.equipment_version = version
    holding.save(update_fields=["user_id", "equipment_version", "updated_at"])


@subscriber(EquipmentTopics.EQUIPMENT_CHECKED_OUT)
def follow_check_out(event: EquipmentCheckedOut, context: MessageContext) -> None:
    _record(event.equipment_id, event.user_id, event.equipment_version)
    logger.info("holding recorded equipment_id=%s user_id=%s message_id=%s",
                event.equipment_id, event.user_id, context.message_id)


@subscriber(EquipmentTopics.EQUIPMENT_CHECKED_IN)
def follow_check_in(event: EquipmentCheckedIn, context: MessageContext) -> None:
    _record(event.equipment_id, None, event.equipment_version)
    logger.info("holding cleared equipment_id=%s message_id=%s", event.equipment_id,
                context.message_id)
