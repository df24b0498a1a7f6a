"""Admin for the files context: uploads and deletions go through ``files.services``."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from . import services
from .models import StorageUsage, StoredFile


@admin.register(StoredFile)
class StoredFileAdmin(admin.ModelAdmin):
    list_display = ("name", "kind", "owner_id", "equipment_id", "size", "created_at")
    list_filter = ("kind",)
    search_fields = ("name", "=owner_id", "=equipment_id")
    fields = ("name", "content", "owner_id", "equipment_id", "kind", "size",
              "source_message_id", "created_at")

    def get_readonly_fields(self, request: HttpRequest, obj: StoredFile | None = None) -> Any:
        if obj is None:
            return ("kind", "size", "source_message_id", "created_at")
        return self.fields

    def save_model(self, request: HttpRequest, obj: StoredFile, form: Any, change: bool) -> None:
        if change:
            return
        upload = form.cleaned_data["content"]
        stored = services.store_file(
            name=obj.name or upload.name, content=upload, owner_id=obj.owner_id,
            equipment_id=obj.equipment_id,
        )
        obj.pk = stored.pk
        obj.refresh_from_db()

    def delete_model(self, request: HttpRequest, obj: StoredFile) -> None:
        services.delete_files([obj])

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[StoredFile]) -> None:
        services.delete_files(queryset)


@admin.register(StorageUsage)
class StorageUsageAdmin(admin.ModelAdmin):
    """Read-only: kept by the domain handlers in the transaction of each upload or deletion."""

    list_display = ("owner_id", "file_count", "total_bytes", "updated_at")
    search_fields = ("=owner_id",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest,
                              obj: StorageUsage | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest,
                              obj: StorageUsage | None = None) -> bool:
        return False
