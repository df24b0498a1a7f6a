"""Who may see and do what across the two message models.

The rule (docs/admin.md, "Permissions"): each model's own permissions gate its own rows, and
whatever shows or changes the *other* model's data needs that model's permission too:

- a received row shows the published message's payload and headers (and finds rows by
  ``content:`` search) only with *view* on published messages;
- a published message shows its received rows (groups, handlers, errors) only with *view* on
  received messages;
- requeuing a *succeeded* published message runs its received rows again, so it needs
  *change* on received messages as well (a failed one is only dispatched again);
- deleting a published message deletes its received rows, so it needs *delete* on both
  (Django's own cascade check);
- the dashboard pages need *view* on both.

Permissions are asked of the model admins registered on the same admin site, so a project
that subclasses them keeps its own rules.
"""

from __future__ import annotations

from typing import Any

from django.contrib.admin import AdminSite
from django.http import HttpRequest

from ..models import PublishedMessage, ReceivedMessage


def _admin_for(site: AdminSite, model: type[Any]) -> Any:
    return site._registry.get(model)


def may(request: HttpRequest, site: AdminSite, action: str, model: type[Any]) -> bool:
    """``action`` ("view" or "change") allowed on ``model`` through its admin on ``site``."""
    model_admin = _admin_for(site, model)
    if model_admin is None:
        return False
    if action == "view":
        return bool(model_admin.has_view_permission(request))
    return bool(getattr(model_admin, f"has_{action}_permission")(request))


def may_view_payloads(request: HttpRequest, site: AdminSite) -> bool:
    return may(request, site, "view", PublishedMessage)


def may_view_receipts(request: HttpRequest, site: AdminSite) -> bool:
    return may(request, site, "view", ReceivedMessage)


def may_rerun_receipts(request: HttpRequest, site: AdminSite) -> bool:
    return may(request, site, "change", ReceivedMessage)


def may_view_dashboard(request: HttpRequest, site: AdminSite) -> bool:
    """Staff (checked by admin_view) with view permission on both message models."""
    return may_view_payloads(request, site) and may_view_receipts(request, site)


PAYLOAD_HIDDEN = "hidden: showing it needs the view permission on published messages"
RECEIPTS_HIDDEN = "hidden: showing them needs the view permission on received messages"
