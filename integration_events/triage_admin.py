"""The failure triage page of the admin (integration_events.triage behind it).

A self-contained view taking ``(request, admin_site)``; :func:`triage_urls` gives the URL
pattern to add to an admin's ``get_urls`` (wrapped in ``admin_site.admin_view``, which brings
the login redirect and CSRF protection). Who may do what, by the received message's model
permissions: staff with *view* (or change) see the page; *change* may requeue a group; *delete*
may delete one (after a confirmation page).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.contrib import messages
from django.contrib.admin import AdminSite
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import NoReverseMatch, URLPattern, path, reverse
from django.utils.dateparse import parse_datetime
from django.utils.http import urlencode

from .models import ReceivedMessage
from .triage import delete_group, failure_groups, members, requeue_group

URL_NAME = "integration_events_triage"
TEMPLATE = "integration_events/admin/triage.html"


def _perm(request: HttpRequest, admin_site: AdminSite, action: str) -> bool:
    """Staff whom the received messages' registered ModelAdmin allows ``action`` ("view",
    "change", "delete"): a project that narrows that admin's permissions narrows triage too
    (the rule of integration_events.admin.permissions, which this layer may not import)."""
    user: Any = request.user
    model_admin = admin_site._registry.get(ReceivedMessage)
    if model_admin is None or not (user.is_active and user.is_staff):
        return False
    return bool(getattr(model_admin, f"has_{action}_permission")(request))


def _admin_url(name: str, *args: Any, query: dict[str, str] | None = None) -> str | None:
    try:
        url = reverse(f"admin:integration_events_receivedmessage_{name}", args=args)
    except NoReverseMatch:
        return None
    return f"{url}?{urlencode(query)}" if query else url


def _page() -> dict[str, Any]:
    """What the dashboard's base template needs (breadcrumbs, the highlighted tab)."""
    return {"opts": ReceivedMessage._meta, "app_label": ReceivedMessage._meta.app_label,
            "ie_page": "triage", "ie_crumb": "Failure triage"}


def triage_view(request: HttpRequest, admin_site: AdminSite) -> HttpResponse:
    """GET: the failure groups. POST ``action`` = requeue | delete (then ``confirm``), with
    ``error_type``, ``handler`` and ``through`` (the group's last failure the page showed)."""
    if not _perm(request, admin_site, "view"):
        raise PermissionDenied
    if request.method == "POST":
        return _act(request, admin_site)
    groups = failure_groups()
    rows = [{
        "group": g,
        "through": g.last_seen.isoformat() if g.last_seen else "",
        "list_url": _admin_url("changelist", query={
            "status__exact": "failed", "error_type": g.error_type, "handler": g.handler}),
        "sample_url": _admin_url("change", g.sample.pk) if g.sample is not None else None,
    } for g in groups]
    return render(request, TEMPLATE, {
        **admin_site.each_context(request), **_page(), "title": "Failure triage", "rows": rows,
        "can_requeue": _perm(request, admin_site, "change"),
        "can_delete": _perm(request, admin_site, "delete"),
    })


def _act(request: HttpRequest, admin_site: AdminSite) -> HttpResponse:
    action = request.POST.get("action", "")
    error_type = request.POST.get("error_type", "")
    handler = request.POST.get("handler", "")
    try:
        through = _parse_through(request.POST.get("through", ""))
    except ValueError:
        action = ""
    if action not in ("requeue", "delete"):
        messages.error(request, "Nothing done: the form was incomplete. Reload the page.")
        return HttpResponseRedirect(request.path)
    if not _perm(request, admin_site, "change" if action == "requeue" else "delete"):
        raise PermissionDenied
    label = f"{error_type or '(no error type)'} in {handler or '(no handler)'}"
    if action == "delete" and request.POST.get("confirm") != "yes":
        count = members(error_type, handler, through=through).count()
        return render(request, TEMPLATE, {
            **admin_site.each_context(request), **_page(), "title": "Delete dead letters?",
            "confirm": {"error_type": error_type, "handler": handler, "label": label,
                        "through": request.POST.get("through", ""), "count": count},
        })
    if action == "requeue":
        done = requeue_group(error_type, handler, through=through)
        messages.success(request, f"Requeued {done} dead letter(s) of {label}.")
    else:
        done = delete_group(error_type, handler, through=through)
        messages.success(request, f"Deleted {done} dead letter(s) of {label}.")
    return HttpResponseRedirect(request.path)


def _parse_through(raw: str) -> datetime | None:
    """The ``through`` bound: None if absent; ValueError if unreadable."""
    if not raw:
        return None
    value = parse_datetime(raw)  # ValueError for a well-formed but invalid date
    if value is None:
        raise ValueError(raw)
    return value


def triage_urls(admin_site: AdminSite, route: str = "triage/") -> list[URLPattern]:
    """The page's URL pattern, to add to a ModelAdmin's or the AdminSite's ``get_urls()``
    (then reversed as ``admin:integration_events_triage``)."""

    def view(request: HttpRequest) -> HttpResponse:
        return triage_view(request, admin_site)

    return [path(route, admin_site.admin_view(view), name=URL_NAME)]
