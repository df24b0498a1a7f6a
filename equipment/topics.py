"""Topics the equipment context publishes. Other contexts subscribe with these constants."""

from __future__ import annotations

from enum import StrEnum


class EquipmentTopics(StrEnum):
    EQUIPMENT_CREATED = "equipment.equipment-created"
    EQUIPMENT_STATUS_CHANGED = "equipment.equipment-status-changed"
    EQUIPMENT_CHECKED_OUT = "equipment.equipment-checked-out"
    EQUIPMENT_CHECKED_IN = "equipment.equipment-checked-in"
