"""The Django admin as the dashboard: read-only message lists and actions that go through
``integration_events.operations`` (never by writing the status field)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html

from . import operations
from .models import MessageStatus, PublishedMessage, ReceivedMessage, WorkerNode

STATUS_COLOURS = {
    MessageStatus.PENDING: "#6c757d",
    MessageStatus.PROCESSING: "#0d6efd",
    MessageStatus.RETRYING: "#fd7e14",
    MessageStatus.SUCCEEDED: "#198754",
    MessageStatus.FAILED: "#dc3545",
}


def status_badge(status: str) -> str:
    colour = STATUS_COLOURS.get(MessageStatus(status), "#6c757d")
    return format_html(
        '<span class="ie-badge ie-{}" style="background:{};color:#fff;padding:1px 6px;'
        'border-radius:8px;font-size:11px">{}</span>',
        status, colour, MessageStatus(status).label,
    )


class ReadOnlyMessageAdmin(admin.ModelAdmin):
    """Messages cannot be added or edited by hand."""

    show_full_result_count = False
    list_per_page = 50

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # The change permission gates the actions; the form itself is read-only.
        return super().has_change_permission(request, obj)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [f.name for f in self.model._meta.fields]

    @admin.display(description="status", ordering="status")
    def badge(self, obj: Any) -> str:
        return status_badge(obj.status)


@admin.register(PublishedMessage)
class PublishedMessageAdmin(ReadOnlyMessageAdmin):
    list_display = ("id", "topic", "badge", "attempts", "created_at", "next_attempt_at")
    list_filter = ("status",)
    search_fields = ("=id", "topic")
    date_hierarchy = None
    actions = ("requeue", "publish_now")

    @admin.action(description="Requeue selected messages", permissions=["change"])
    def requeue(self, request: HttpRequest, queryset: QuerySet[PublishedMessage]) -> None:
        count = operations.requeue_published(queryset, using=queryset.db)
        self.message_user(request, f"{count} message(s) requeued.", messages.SUCCESS)

    @admin.action(description="Publish selected delayed messages now", permissions=["change"])
    def publish_now(self, request: HttpRequest, queryset: QuerySet[PublishedMessage]) -> None:
        count = operations.publish_now(queryset, using=queryset.db)
        self.message_user(request, f"{count} message(s) made due now.", messages.SUCCESS)


@admin.register(ReceivedMessage)
class ReceivedMessageAdmin(ReadOnlyMessageAdmin):
    list_display = ("id", "topic", "group", "badge", "attempts", "created_at", "next_attempt_at")
    list_filter = ("status", "group")
    search_fields = ("=message__id", "topic")
    list_select_related = False
    actions = ("reexecute",)

    @admin.action(description="Re-execute selected messages", permissions=["change"])
    def reexecute(self, request: HttpRequest, queryset: QuerySet[ReceivedMessage]) -> None:
        count = operations.reexecute_received(queryset, using=queryset.db)
        self.message_user(request, f"{count} message(s) queued to run again.", messages.SUCCESS)


@admin.register(WorkerNode)
class WorkerNodeAdmin(admin.ModelAdmin):
    list_display = ("name", "hostname", "pid", "started_at", "last_seen_at", "processed")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
