"""The dashboard pages (overview, its live JSON, subscribers, nodes) and the heartbeat rows.

They hang off the ``Dashboard`` proxy's admin URLs (``/admin/integration_events/dashboard/``),
so Django's sidebar highlights "Dashboard" on them, and need staff status plus the view
permission on both message models.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseNotAllowed,
    HttpResponseRedirect,
    JsonResponse,
)
from django.template.loader import render_to_string
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse

from .. import dashboard, operations
from ..conf import get_settings
from ..groups import group_infos
from ..models import Dashboard, MessageStatus, PublishedMessage, ReceivedMessage, WorkerNode
from ..nodes import alive_within
from ..triage_admin import triage_urls
from . import display, permissions

CHART_TEMPLATE = "integration_events/admin/_chart.html"
HISTORY_TEMPLATE = "integration_events/admin/_history.html"


@admin.register(Dashboard)
class DashboardAdmin(admin.ModelAdmin):
    """The "Dashboard" entry on the admin index opens the overview. Visible to whoever may
    see the dashboard (view permission on both message models), and only to them."""

    ie_page = "overview"

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return obj is None and permissions.may_view_dashboard(request, self.admin_site)

    def has_module_permission(self, request: HttpRequest) -> bool:
        return permissions.may_view_dashboard(request, self.admin_site)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_urls(self) -> list[URLPattern]:
        def wrap(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
            return self.admin_site.admin_view(view)

        # Before the defaults: the overview takes the place of this proxy's change list.
        return [
            path("", wrap(self.overview_view), name="integration_events_overview"),
            path("live.json", wrap(self.live_view), name="integration_events_live"),
            path("subscribers/", wrap(self.subscribers_view),
                 name="integration_events_subscribers"),
            path("subscribers/group/", wrap(self.group_action_view),
                 name="integration_events_group_action"),
            path("nodes/", wrap(self.nodes_view), name="integration_events_nodes"),
            *triage_urls(self.admin_site, route="triage/"),
            *super().get_urls(),
        ]

    def _using(self, request: HttpRequest) -> str:
        return str(self.get_queryset(request).db)

    def _context(self, request: HttpRequest, title: str, page: str) -> dict[str, Any]:
        if not self.has_view_permission(request):
            raise PermissionDenied
        return {
            **self.admin_site.each_context(request),
            "title": title,
            "opts": self.model._meta,
            "app_label": self.model._meta.app_label,
            "ie_page": page,
            "ie_crumb": title.split(": ", 1)[-1].capitalize(),
        }

    def _list_url(self, model: type[Any]) -> str:
        return reverse(f"admin:integration_events_{model._meta.model_name}_changelist",
                       current_app=self.admin_site.name)

    # --- overview -----------------------------------------------------------------------------

    def overview_view(self, request: HttpRequest) -> HttpResponse:
        context = self._context(request, "Integration events: overview", "overview")
        snap = dashboard.snapshot(self._using(request))
        live = snap["live"]
        context.update(
            live=live,
            rate_chart=dashboard.rate_chart(live),
            history=snap["history"],
            history_chart=dashboard.history_chart(snap["history"]),
            alive_nodes=snap["alive_nodes"],
            alive_within=display.duration(alive_within().total_seconds()),
            published_total=sum(live["published"].values()),
            dead_letters=live["published"]["failed"] + sum(
                counts["failed"] for counts in live["received"].values()),
            statuses=[(s.value, s.label, display.status_badge(s.value)) for s in MessageStatus],
            published_rows=[
                (s.value, display.status_badge(s.value), live["published"][s.value],
                 f"published:{s.value}" in live["estimated"])
                for s in MessageStatus
            ],
            received_rows=[
                (group, [(s.value, counts[s.value], f"received:{group}:{s.value}"
                          in live["estimated"]) for s in MessageStatus])
                for group, counts in live["received"].items()
            ],
            exact_limit=dashboard.EXACT_COUNT_LIMIT,
            poll_seconds=dashboard.LIVE_POLL_SECONDS,
            poll_ms=dashboard.LIVE_POLL_SECONDS * 1000,
            lag_published=dashboard.format_age(live["lag"]["published"]),
            lag_received=dashboard.format_age(live["lag"]["received"]),
            live_url=reverse("admin:integration_events_live", current_app=self.admin_site.name),
            published_url=self._list_url(PublishedMessage),
            received_url=self._list_url(ReceivedMessage),
        )
        return TemplateResponse(request, "integration_events/admin/overview.html", context)

    def live_view(self, request: HttpRequest) -> JsonResponse:
        if not self.has_view_permission(request):
            return JsonResponse({"error": "permission denied"}, status=403)
        snap = dashboard.snapshot(self._using(request))
        hist = snap["history"]
        return JsonResponse({
            **snap["live"],
            "chart": render_to_string(CHART_TEMPLATE, {"chart": dashboard.rate_chart(
                snap["live"])}),
            "history": {"totals": hist["totals"], "rows": hist["rows"]},
            "history_html": render_to_string(HISTORY_TEMPLATE, {
                "history": hist, "history_chart": dashboard.history_chart(hist)}),
            "alive_nodes": snap["alive_nodes"],
        })

    # --- subscribers and nodes ----------------------------------------------------------------

    def subscribers_view(self, request: HttpRequest) -> HttpResponse:
        context = self._context(request, "Integration events: subscribers", "subscribers")
        topics = dashboard.subscriber_topics()
        context.update(
            topics=topics,
            orphaned=[t for t in topics if t.orphaned],
            undeclared=[t for t in topics if t.undeclared],
            groups=group_infos(self._using(request)),
            may_pause=permissions.may_rerun_receipts(request, self.admin_site),
            group_action_url=reverse("admin:integration_events_group_action",
                                     current_app=self.admin_site.name),
        )
        return TemplateResponse(request, "integration_events/admin/subscribers.html", context)

    def group_action_view(self, request: HttpRequest) -> HttpResponse:
        """POST pause/resume GROUP (change permission on received messages: pausing stops
        their handlers)."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if not (self.has_view_permission(request)
                and permissions.may_rerun_receipts(request, self.admin_site)):
            raise PermissionDenied
        group, action = request.POST.get("group", ""), request.POST.get("action", "")
        known = {info.group for info in group_infos(self._using(request))}
        if group not in known or action not in ("pause", "resume"):
            self.message_user(request, "No such group or action.", messages.ERROR)
        elif action == "pause":
            changed = operations.pause_group(group, using=self._using(request))
            self.message_user(request, f"Group {group} paused: no handler of it starts until "
                              "it is resumed; running ones finish." if changed
                              else f"Group {group} was paused already.", messages.SUCCESS)
        else:
            changed = operations.resume_group(group, using=self._using(request))
            self.message_user(request, f"Group {group} resumed." if changed
                              else f"Group {group} was not paused.", messages.SUCCESS)
        return HttpResponseRedirect(reverse("admin:integration_events_subscribers",
                                            current_app=self.admin_site.name) + "#ie-groups")

    def nodes_view(self, request: HttpRequest) -> HttpResponse:
        context = self._context(request, "Integration events: nodes", "nodes")
        infos, unassigned = dashboard.nodes(using=self._using(request))
        context.update(
            nodes=infos, unassigned=unassigned,
            interval=display.duration(get_settings().HEARTBEAT_INTERVAL),
            alive_within=display.duration(alive_within().total_seconds()),
        )
        return TemplateResponse(request, "integration_events/admin/nodes.html", context)


@admin.register(WorkerNode)
class WorkerNodeAdmin(admin.ModelAdmin):
    """Heartbeat rows (the Nodes dashboard page adds whether each is alive and its claims)."""

    ie_page = "nodes"
    list_display = ("name", "hostname", "pid", "started", "last_seen", "processed")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="started", ordering="started_at")
    def started(self, obj: WorkerNode) -> str:
        return display.when(obj.started_at)

    @admin.display(description="last heartbeat", ordering="last_seen_at")
    def last_seen(self, obj: WorkerNode) -> str:
        return display.when(obj.last_seen_at)
