"""The equipment aggregate, and what the equipment context knows about users (from the
accounts context's events: ids only, no foreign key across contexts)."""

from __future__ import annotations

import uuid

from django.db import models
from django.utils import timezone


class EquipmentStatus(models.TextChoices):
    AVAILABLE = "available", "Available"
    """Can be checked out."""
    CHECKED_OUT = "checked_out", "Checked out"
    """A user has it (``checked_out_to``)."""
    MAINTENANCE = "maintenance", "Maintenance"
    """Being repaired or inspected; cannot be checked out."""
    RETIRED = "retired", "Retired"
    """Out of the inventory for good; no further changes."""


class Equipment(models.Model):
    """A piece of equipment. Change it only through ``equipment.services``, which publishes
    the matching events and bumps ``version``."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=200)
    category = models.CharField(max_length=100)
    status = models.CharField(
        max_length=20, choices=EquipmentStatus.choices, default=EquipmentStatus.AVAILABLE
    )
    # The accounts context's user id (no foreign key across contexts).
    checked_out_to = models.PositiveBigIntegerField(null=True, blank=True, db_index=True)
    checked_out_at = models.DateTimeField(null=True, blank=True)
    # Raised by every change; events carry it so that consumers can order what they receive.
    version = models.PositiveIntegerField(default=1)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "equipment"
        ordering = ("name",)

    def __str__(self) -> str:
        return self.name


class CategoryStock(models.Model):
    """How many items of a category are in each status, kept exact by the domain handlers
    of EquipmentAdded and EquipmentStatusSet in the transaction that changes the equipment.

    A column per EquipmentStatus value (the column names are the values).
    """

    category = models.CharField(max_length=100, primary_key=True)
    available = models.IntegerField(default=0)
    checked_out = models.IntegerField(default=0)
    maintenance = models.IntegerField(default=0)
    retired = models.IntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("category",)
        verbose_name_plural = "category stock"

    def __str__(self) -> str:
        return self.category

    @property
    def in_service(self) -> int:
        """Everything not retired."""
        return self.available + self.checked_out + self.maintenance


class KnownUser(models.Model):
    """A user as the equipment context heard of them (UserRegistered / UserDeleted)."""

    user_id = models.PositiveBigIntegerField(primary_key=True)
    email = models.EmailField(blank=True)
    display_name = models.CharField(max_length=150, blank=True)
    registered_at = models.DateTimeField(null=True, blank=True)
    deleted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("user_id",)

    def __str__(self) -> str:
        return self.display_name or self.email or str(self.user_id)

    @property
    def is_deleted(self) -> bool:
        return self.deleted_at is not None
