"""Admin for the equipment context. Every change goes through ``equipment.services``, so
clicking here publishes the same events as the code does."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ActionForm
from django.db.models import QuerySet
from django.http import HttpRequest

from . import services
from .models import CategoryStock, Equipment, EquipmentStatus, KnownUser


class EquipmentActionForm(ActionForm):
    """The action bar, with the user id that "check out" needs."""

    user_id = forms.IntegerField(required=False, min_value=1, label="User id")


@admin.register(Equipment)
class EquipmentAdmin(admin.ModelAdmin):
    list_display = ("name", "category", "status", "checked_out_to", "version", "updated_at")
    list_filter = ("status", "category")
    search_fields = ("name", "category", "=id")
    action_form = EquipmentActionForm
    actions = ("check_out", "check_in", "send_to_maintenance", "make_available", "retire")
    fields = ("name", "category", "status", "checked_out_to", "checked_out_at", "version",
              "created_at", "updated_at")

    def get_readonly_fields(self, request: HttpRequest, obj: Equipment | None = None) -> Any:
        # Name and category on the add form; after that, state changes only through actions.
        if obj is None:
            return ("status", "checked_out_to", "checked_out_at", "version", "created_at",
                    "updated_at")
        return self.fields

    def has_delete_permission(self, request: HttpRequest, obj: Equipment | None = None) -> bool:
        return False  # equipment is retired, not deleted

    def save_model(self, request: HttpRequest, obj: Equipment, form: Any, change: bool) -> None:
        if change:
            return  # every field is read-only after creation
        created = services.create_equipment(
            name=obj.name, category=obj.category, equipment_id=obj.id
        )
        obj.refresh_from_db()
        obj._state.adding = created._state.adding

    def _each(self, request: HttpRequest, queryset: QuerySet[Equipment], verb: str,
              command: Any) -> None:
        done = 0
        for equipment in queryset:
            try:
                command(equipment)
                done += 1
            except services.EquipmentError as exc:
                self.message_user(request, str(exc), messages.WARNING)
        if done:
            self.message_user(request, f"{verb} {done} item(s).", messages.SUCCESS)

    @admin.action(description="Check out to the user id given", permissions=["change"])
    def check_out(self, request: HttpRequest, queryset: QuerySet[Equipment]) -> None:
        try:
            user_id = forms.IntegerField(min_value=1).clean(request.POST.get("user_id"))
        except forms.ValidationError:
            user_id = None
        if not user_id:
            self.message_user(request, "Enter the user id to check out to.", messages.ERROR)
            return
        self._each(request, queryset, "Checked out",
                   lambda e: services.check_out(e.pk, user_id))

    @admin.action(description="Check in", permissions=["change"])
    def check_in(self, request: HttpRequest, queryset: QuerySet[Equipment]) -> None:
        self._each(request, queryset, "Checked in", lambda e: services.check_in(e.pk))

    @admin.action(description="Send to maintenance", permissions=["change"])
    def send_to_maintenance(self, request: HttpRequest, queryset: QuerySet[Equipment]) -> None:
        self._each(request, queryset, "Sent to maintenance",
                   lambda e: services.change_status(e.pk, EquipmentStatus.MAINTENANCE))

    @admin.action(description="Make available", permissions=["change"])
    def make_available(self, request: HttpRequest, queryset: QuerySet[Equipment]) -> None:
        self._each(request, queryset, "Made available",
                   lambda e: services.change_status(e.pk, EquipmentStatus.AVAILABLE))

    @admin.action(description="Retire", permissions=["change"])
    def retire(self, request: HttpRequest, queryset: QuerySet[Equipment]) -> None:
        self._each(request, queryset, "Retired",
                   lambda e: services.change_status(e.pk, EquipmentStatus.RETIRED))


@admin.register(KnownUser)
class KnownUserAdmin(admin.ModelAdmin):
    """Read-only: fed by the accounts context's events."""

    list_display = ("user_id", "email", "display_name", "registered_at", "deleted_at")
    search_fields = ("email", "display_name", "=user_id")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: KnownUser | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: KnownUser | None = None) -> bool:
        return False


@admin.register(CategoryStock)
class CategoryStockAdmin(admin.ModelAdmin):
    """Read-only: kept by the domain handlers in the transaction of each change."""

    list_display = ("category", "available", "checked_out", "maintenance", "retired",
                    "in_service", "updated_at")
    search_fields = ("category",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest,
                              obj: CategoryStock | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest,
                              obj: CategoryStock | None = None) -> bool:
        return False
