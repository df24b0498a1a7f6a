"""The accounts context keeps Django's auth user and a profile beside it, plus its own view
of which equipment each user holds (fed by the equipment context's events, ids only)."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone


class Profile(models.Model):
    """What the accounts context adds to Django's user."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="profile"
    )
    display_name = models.CharField(max_length=150, blank=True)
    registered_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ("-registered_at",)

    def __str__(self) -> str:
        return self.display_name or str(self.user_id)


class EquipmentHolding(models.Model):
    """Who holds a piece of equipment, as the accounts context last heard it.

    Delivery is unordered, so the equipment's version decides: an event older than the
    stored version is ignored.
    """

    equipment_id = models.UUIDField(primary_key=True)
    user_id = models.PositiveBigIntegerField(null=True, blank=True, db_index=True)
    equipment_version = models.PositiveIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("-updated_at",)

    def __str__(self) -> str:
        return f"{self.equipment_id} -> {self.user_id or '-'}"
