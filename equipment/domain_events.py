"""Domain events of the equipment context: raised inside its transactions and handled
inside it (``subscribers.py``), never seen by other contexts. Their handlers keep the stock
per category exact and translate the change into the integration events other contexts
receive, so the outbox rows commit or roll back with the change.
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from integration_events import DomainEvent


class EquipmentAdded(DomainEvent):
    """A piece of equipment joined the inventory."""

    equipment_id: UUID
    name: str
    category: str
    status: str
    equipment_version: int
    occurred_at: datetime


class EquipmentStatusSet(DomainEvent):
    """The equipment's status changed (check-outs and check-ins included)."""

    equipment_id: UUID
    category: str
    old_status: str
    new_status: str
    equipment_version: int
    occurred_at: datetime
