from __future__ import annotations

from django.apps import AppConfig


class FilesConfig(AppConfig):
    """The files context: documents owned by users or attached to equipment, with their
    content on Django's default storage."""

    name = "files"
    verbose_name = "Files"
    default_auto_field = "django.db.models.BigAutoField"
