"""Integration events of the equipment context.

Delivery is unordered, so every event carries when it happened and the equipment's version
after the change: a consumer that keeps a copy of the state ignores an event older than what
it already has.
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from integration_events import IntegrationEvent

from .topics import EquipmentTopics


class EquipmentCreated(IntegrationEvent, topic=EquipmentTopics.EQUIPMENT_CREATED):
    """A piece of equipment joined the inventory."""

    equipment_id: UUID
    name: str
    category: str
    status: str
    equipment_version: int
    occurred_at: datetime


class EquipmentStatusChanged(IntegrationEvent, topic=EquipmentTopics.EQUIPMENT_STATUS_CHANGED):
    """The equipment's status changed (every change, check-outs and check-ins included)."""

    equipment_id: UUID
    old_status: str
    new_status: str
    equipment_version: int
    occurred_at: datetime


class EquipmentCheckedOut(IntegrationEvent, topic=EquipmentTopics.EQUIPMENT_CHECKED_OUT):
    """A user took the equipment."""

    equipment_id: UUID
    user_id: int
    equipment_version: int
    occurred_at: datetime


class EquipmentCheckedIn(IntegrationEvent, topic=EquipmentTopics.EQUIPMENT_CHECKED_IN):
    """The equipment came back from a user (``reason`` is "returned" or "user-deleted")."""

    equipment_id: UUID
    user_id: int
    reason: str
    equipment_version: int
    occurred_at: datetime
