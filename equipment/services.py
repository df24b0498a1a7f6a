"""The commands of the equipment context. Each one locks the equipment row, changes it and
raises or publishes its events inside one transaction: the events exist if and only if the
change committed.

Creation and status changes raise domain events (``domain_events.py``); their handlers in
``subscribers.py`` update the stock per category and publish EquipmentCreated /
EquipmentStatusChanged, all in this transaction. Check-outs and check-ins publish their
integration events directly: nothing else inside the context reacts to them."""

from __future__ import annotations

from uuid import UUID

from django.db import transaction
from django.utils import timezone

from integration_events import publish, raise_event

from .domain_events import EquipmentAdded, EquipmentStatusSet
from .events import EquipmentCheckedIn, EquipmentCheckedOut
from .models import Equipment, EquipmentStatus, KnownUser


class EquipmentError(Exception):
    """A command of the equipment context was refused (the message says why)."""


def _locked(equipment_id: UUID) -> Equipment:
    try:
        return Equipment.objects.select_for_update().get(pk=equipment_id)
    except Equipment.DoesNotExist:
        raise EquipmentError(f"no equipment {equipment_id}") from None


def _set_status(equipment: Equipment, status: EquipmentStatus, **changes: object) -> str:
    """Apply a status change and raise EquipmentStatusSet; returns the old status."""
    old = equipment.status
    equipment.status = status
    equipment.version += 1
    for field, value in changes.items():
        setattr(equipment, field, value)
    equipment.save(update_fields=["status", "version", "updated_at", *changes])
    raise_event(EquipmentStatusSet(
        equipment_id=equipment.pk, category=equipment.category, old_status=old,
        new_status=status, equipment_version=equipment.version,
        occurred_at=equipment.updated_at,
    ))
    return old


def create_equipment(*, name: str, category: str, equipment_id: UUID | None = None) -> Equipment:
    """Add equipment to the inventory (Available); raises EquipmentAdded, whose handlers
    count it and publish EquipmentCreated."""
    name, category = name.strip(), category.strip()
    if not name or not category:
        raise EquipmentError("equipment needs a name and a category")
    with transaction.atomic():
        equipment = Equipment(name=name, category=category)
        if equipment_id is not None:
            equipment.id = equipment_id
        equipment.save(force_insert=True)
        raise_event(EquipmentAdded(
            equipment_id=equipment.pk, name=equipment.name, category=equipment.category,
            status=equipment.status, equipment_version=equipment.version,
            occurred_at=equipment.created_at,
        ))
    return equipment


def change_status(equipment_id: UUID, status: EquipmentStatus | str) -> Equipment:
    """Move equipment to Available, Maintenance or Retired (check-outs and check-ins have
    their own commands). Publishes EquipmentStatusChanged; a no-op if nothing changes."""
    status = EquipmentStatus(status)
    if status == EquipmentStatus.CHECKED_OUT:
        raise EquipmentError("use check_out() to give equipment to a user")
    with transaction.atomic():
        equipment = _locked(equipment_id)
        if equipment.status == status:
            return equipment
        if equipment.status == EquipmentStatus.RETIRED:
            raise EquipmentError(f"{equipment} is retired")
        if equipment.status == EquipmentStatus.CHECKED_OUT:
            raise EquipmentError(f"{equipment} is checked out: check it in first")
        _set_status(equipment, status)
    return equipment


def check_out(equipment_id: UUID, user_id: int) -> Equipment:
    """Give available equipment to a user. Publishes EquipmentStatusChanged and
    EquipmentCheckedOut."""
    with transaction.atomic():
        equipment = _locked(equipment_id)
        if equipment.status != EquipmentStatus.AVAILABLE:
            raise EquipmentError(
                f"{equipment} is {equipment.get_status_display().lower()}, not available"
            )
        # The user may not be known here yet (UserRegistered is delivered asynchronously), but
        # a user we know to be deleted cannot take anything.
        if KnownUser.objects.filter(user_id=user_id, deleted_at__isnull=False).exists():
            raise EquipmentError(f"user {user_id} has been deleted")
        now = timezone.now()
        _set_status(equipment, EquipmentStatus.CHECKED_OUT, checked_out_to=user_id,
                    checked_out_at=now)
        publish(EquipmentCheckedOut(
            equipment_id=equipment.pk, user_id=user_id, equipment_version=equipment.version,
            occurred_at=now,
        ))
    return equipment


def check_in(equipment_id: UUID, *, reason: str = "returned") -> Equipment:
    """Take equipment back from its user. Publishes EquipmentStatusChanged and
    EquipmentCheckedIn."""
    with transaction.atomic():
        equipment = _locked(equipment_id)
        if equipment.status != EquipmentStatus.CHECKED_OUT or equipment.checked_out_to is None:
            raise EquipmentError(f"{equipment} is not checked out")
        user_id = equipment.checked_out_to
        _set_status(equipment, EquipmentStatus.AVAILABLE, checked_out_to=None,
                    checked_out_at=None)
        publish(EquipmentCheckedIn(
            equipment_id=equipment.pk, user_id=user_id, reason=reason,
            equipment_version=equipment.version, occurred_at=equipment.updated_at,
        ))
    return equipment


def check_in_all_from_user(user_id: int, *, reason: str) -> list[Equipment]:
    """Check in everything ``user_id`` holds (a no-op when they hold nothing)."""
    with transaction.atomic():
        ids = list(
            Equipment.objects.filter(
                checked_out_to=user_id, status=EquipmentStatus.CHECKED_OUT
            ).values_list("pk", flat=True)
        )
        return [check_in(pk, reason=reason) for pk in ids]
