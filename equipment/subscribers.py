"""equipment's handlers: its domain events (keep the stock per category, publish the
integration events), and the integration events it subscribes to (notify on new equipment,
follow users, hand back a deleted user's equipment)."""

from __future__ import annotations

import logging

from django.conf import settings
from django.core.mail import send_mail
from django.db.models import F

from accounts.events import UserDeleted, UserRegistered
from accounts.topics import AccountsTopics
from integration_events import MessageContext, domain_handler, publish, subscriber

from . import services
from .domain_events import EquipmentAdded, EquipmentStatusSet
from .events import EquipmentCreated, EquipmentStatusChanged
from .models import CategoryStock, KnownUser
from .topics import EquipmentTopics

logger = logging.getLogger(__name__)


# --- domain events: run inside the transaction that changed the equipment, in this order ---

def _shift(category: str, **deltas: int) -> None:
    """Add ``deltas`` to the category's status columns (creating its row at zero first).
    F() updates lock the row, so concurrent changes of one category add up."""
    changes = {column: F(column) + delta for column, delta in deltas.items()}
    if not CategoryStock.objects.filter(category=category).update(**changes):
        CategoryStock.objects.get_or_create(category=category)
        CategoryStock.objects.filter(category=category).update(**changes)


@domain_handler
def count_added_equipment(event: EquipmentAdded) -> None:
    """One more item of its category in its status."""
    _shift(event.category, **{event.status: 1})


@domain_handler
def announce_equipment_created(event: EquipmentAdded) -> None:
    """Tell the other contexts; the outbox row commits with the new equipment."""
    publish(EquipmentCreated(
        equipment_id=event.equipment_id, name=event.name, category=event.category,
        status=event.status, equipment_version=event.equipment_version,
        occurred_at=event.occurred_at,
    ))


@domain_handler
def count_status_change(event: EquipmentStatusSet) -> None:
    """Move one item of the category from the old status's column to the new one's."""
    _shift(event.category, **{event.old_status: -1, event.new_status: 1})


@domain_handler
def announce_status_change(event: EquipmentStatusSet) -> None:
    """Tell the other contexts; the outbox row commits with the status change."""
    publish(EquipmentStatusChanged(
        equipment_id=event.equipment_id, old_status=event.old_status,
        new_status=event.new_status, equipment_version=event.equipment_version,
        occurred_at=event.occurred_at,
    ))


# --- integration events from this and other contexts: delivered after commit -------------


# atomic=False: sending the mail is this handler's only effect and it writes nothing to the
# database, so there is no transaction whose rollback the mail would have to wait for. Sending
# in on_commit instead would be worse here: the inbox row would already be marked succeeded
# when the send failed, so the failure could not be retried. Sent last and re-raised on
# failure, the mail is retried until it goes out (at least once; twice only if the worker dies
# between the send and recording success).
@subscriber(EquipmentTopics.EQUIPMENT_CREATED, atomic=False)
def notify_equipment_created(event: EquipmentCreated, context: MessageContext) -> None:
    """E-mail the inventory team about new equipment."""
    recipients = list(getattr(settings, "EQUIPMENT_NOTIFICATION_RECIPIENTS", []))
    if not recipients:
        return
    try:
        send_mail(
            subject=f"New equipment: {event.name}",
            message=(
                f"{event.name} ({event.category}) joined the inventory at "
                f"{event.occurred_at:%Y-%m-%d %H:%M} UTC.\n\nEquipment id: {event.equipment_id}\n"
            ),
            from_email=None,
            recipient_list=recipients,
            fail_silently=False,
        )
    except Exception:
        logger.warning("equipment notification failed equipment_id=%s message_id=%s attempt=%s",
                       event.equipment_id, context.message_id, context.attempt)
        raise
    logger.info("equipment notification sent equipment_id=%s message_id=%s",
                event.equipment_id, context.message_id)


@subscriber(AccountsTopics.USER_REGISTERED)
def remember_user(event: UserRegistered, context: MessageContext) -> None:
    """Keep what the equipment context needs to know about a user."""
    known, created = KnownUser.objects.get_or_create(
        user_id=event.user_id,
        defaults={"email": event.email, "display_name": event.display_name,
                  "registered_at": event.registered_at},
    )
    if not created and known.registered_at is None:
        # UserDeleted arrived first (delivery is unordered): fill in, stay deleted.
        known.email, known.display_name = event.email, event.display_name
        known.registered_at = event.registered_at
        known.save(update_fields=["email", "display_name", "registered_at"])


@subscriber(AccountsTopics.USER_DELETED)
def hand_back_equipment(event: UserDeleted, context: MessageContext) -> None:
    """Check in everything the deleted user held; each check-in publishes
    EquipmentCheckedIn in this handler's transaction, continuing the event chain."""
    KnownUser.objects.update_or_create(
        user_id=event.user_id,
        defaults={"deleted_at": event.deleted_at},
        create_defaults={"email": event.email, "deleted_at": event.deleted_at},
    )
    returned = services.check_in_all_from_user(event.user_id, reason="user-deleted")
    if returned:
        logger.info("checked in equipment of deleted user user_id=%s count=%s message_id=%s",
                    event.user_id, len(returned), context.message_id)
