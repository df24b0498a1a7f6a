from __future__ import annotations

from django.apps import AppConfig


class EquipmentConfig(AppConfig):
    """The equipment context: the inventory and who has what checked out."""

    name = "equipment"
    verbose_name = "Equipment"
    default_auto_field = "django.db.models.BigAutoField"
