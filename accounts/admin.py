"""Admin for the accounts context. Adding or deleting a user here goes through
``accounts.services``, so it publishes UserRegistered / UserDeleted like the code does."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.db.models import QuerySet
from django.http import HttpRequest

from . import services
from .models import EquipmentHolding, Profile

User = get_user_model()


class EventPublishingUserAdmin(UserAdmin):
    """Django's user admin, with creation and deletion routed through the services."""

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
        else:
            services.save_new_user(obj)

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        services.delete_user(obj.pk)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        for pk in queryset.values_list("pk", flat=True):
            services.delete_user(pk)


if admin.site.is_registered(User):
    admin.site.unregister(User)
admin.site.register(User, EventPublishingUserAdmin)


@admin.register(Profile)
class ProfileAdmin(admin.ModelAdmin):
    list_display = ("display_name", "user_id", "email", "registered_at", "equipment_held")
    search_fields = ("display_name", "user__email", "user__username")
    readonly_fields = ("user", "registered_at")
    actions = ("delete_users",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # users are registered through the user admin (or register_user())

    def _may_delete_users(self, request: HttpRequest) -> bool:
        return request.user.has_perm(f"{User._meta.app_label}.delete_{User._meta.model_name}")

    # Deleting a profile means deleting its user, through the service: the user admin's delete
    # page (which cascades to the profile) needs this permission, and so does the action.
    def has_delete_permission(self, request: HttpRequest, obj: Profile | None = None) -> bool:
        return self._may_delete_users(request)

    def get_actions(self, request: HttpRequest, action_location: Any = None) -> Any:
        # action_location exists from Django 6.1 on; pass it only when Django gives it.
        extra = {} if action_location is None else {"action_location": action_location}
        actions = super().get_actions(request, **extra)
        actions.pop("delete_selected", None)  # the action below says what it really does
        return actions

    def delete_model(self, request: HttpRequest, obj: Profile) -> None:
        services.delete_user(obj.user_id)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Profile]) -> None:
        for user_id in queryset.values_list("user_id", flat=True):
            services.delete_user(user_id)

    @admin.display(description="e-mail")
    def email(self, obj: Profile) -> str:
        return str(getattr(obj.user, "email", ""))

    @admin.display(description="equipment held")
    def equipment_held(self, obj: Profile) -> int:
        return EquipmentHolding.objects.filter(user_id=obj.user_id).count()

    @admin.action(description="Delete the selected users (publishes UserDeleted)",
                  permissions=["delete_user"])
    def delete_users(self, request: HttpRequest, queryset: QuerySet[Profile]) -> None:
        deleted = sum(services.delete_user(uid) for uid in queryset.values_list("user_id",
                                                                               flat=True))
        self.message_user(request, f"Deleted {deleted} user(s).", messages.SUCCESS)

    def has_delete_user_permission(self, request: HttpRequest) -> bool:
        return self._may_delete_users(request)


@admin.register(EquipmentHolding)
class EquipmentHoldingAdmin(admin.ModelAdmin):
    """Read-only: fed by the equipment context's events."""

    list_display = ("equipment_id", "user_id", "equipment_version", "updated_at")
    search_fields = ("=equipment_id", "=user_id")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest,
                              obj: EquipmentHolding | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest,
                              obj: EquipmentHolding | None = None) -> bool:
        return False
