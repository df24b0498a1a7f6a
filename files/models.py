"""Stored files. Owners and equipment are ids from other contexts (no foreign keys)."""

from __future__ import annotations

import uuid

from django.db import models
from django.utils import timezone


class FileKind(models.TextChoices):
    UPLOAD = "upload", "Upload"
    """Uploaded by or for a user."""
    MANUAL = "manual", "Manual"
    """Generated when equipment is created."""
    RECEIPT = "receipt", "Check-in receipt"
    """Generated when equipment is checked in."""


class StoredFile(models.Model):
    """A file's metadata; its content lives on Django's default storage under ``content``."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    kind = models.CharField(max_length=20, choices=FileKind.choices, default=FileKind.UPLOAD)
    name = models.CharField(max_length=255)
    content = models.FileField(upload_to="files/%Y/%m/", max_length=500)
    size = models.PositiveBigIntegerField(default=0)
    # The accounts context's user id (no foreign key across contexts).
    owner_id = models.PositiveBigIntegerField(null=True, blank=True, db_index=True)
    # The equipment context's equipment id, for generated manuals and receipts.
    equipment_id = models.UUIDField(null=True, blank=True, db_index=True)
    # The message whose handler generated this file: a second delivery finds it and stops.
    source_message_id = models.UUIDField(null=True, blank=True, unique=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ("-created_at",)

    def __str__(self) -> str:
        return self.name


class StorageUsage(models.Model):
    """How much a user stores, kept exact by the domain handlers of FileAdded and
    FileRemoved in the transaction that adds or deletes the file. A user who owns nothing
    has no row."""

    # The accounts context's user id (no foreign key across contexts).
    owner_id = models.PositiveBigIntegerField(primary_key=True)
    file_count = models.IntegerField(default=0)
    total_bytes = models.BigIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("-total_bytes",)
        verbose_name_plural = "storage usage"

    def __str__(self) -> str:
        return f"user {self.owner_id}: {self.file_count} file(s), {self.total_bytes} bytes"
