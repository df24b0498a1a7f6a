"""The Django admin as the dashboard.

Message lists and details are read-only; the actions hand the selected rows to
``integration_events.operations`` (never writing the status field here). The dashboard pages
(overview, live JSON, subscribers, nodes) hang off the published-message admin's URLs and need
staff status plus the view permission on both message models.

Everything is built to stay fast on tables with millions of rows: no full COUNT(*) (an
estimating paginator), no SELECT DISTINCT for filter choices (they come from the registries),
searches that use an index unless the user asks for a content scan, sorting only on indexed
columns, and no date hierarchy (its year/month links are SELECT DISTINCT over the table).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.functional import cached_property
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from . import dashboard, operations
from .events import known_topics
from .models import Dashboard, MessageStatus, PublishedMessage, ReceivedMessage, WorkerNode
from .registry import all_subscriptions

STATUS_COLOURS: dict[str, str] = {
    MessageStatus.PENDING: "#6c757d",
    MessageStatus.PROCESSING: "#0d6efd",
    MessageStatus.RETRYING: "#fd7e14",
    MessageStatus.SUCCEEDED: "#198754",
    MessageStatus.FAILED: "#dc3545",
}


def status_badge(status: str) -> SafeString:
    """A coloured pill for a status (unknown values are shown escaped, in grey)."""
    try:
        label = str(MessageStatus(status).label)
    except ValueError:
        label = status
    return format_html(
        '<span class="ie-badge ie-{}" style="background:{};color:#fff;padding:1px 7px;'
        'border-radius:8px;font-size:11px;white-space:nowrap">{}</span>',
        status, STATUS_COLOURS.get(status, "#6c757d"), label,
    )


# The actions are offered on the list and, for one message, on its detail page (Django 6.1
# added actions on the change form; older versions offer them on the list only).
_ActionLocation: Any = getattr(admin, "ActionLocation", None)
ON_DETAIL_PAGE_TOO: dict[str, Any] = (
    {"location": [_ActionLocation.CHANGE_LIST, _ActionLocation.CHANGE_FORM]}
    if _ActionLocation is not None else {}
)


# --- counting -----------------------------------------------------------------------------------


class EstimatedCountPaginator(Paginator):
    """Counts exactly up to ``exact_limit`` rows (a COUNT over a LIMITed subquery, so it
    reads at most that many index entries); past that it asks PostgreSQL's planner for its
    estimate (EXPLAIN, from the table statistics) and sets ``estimated``. Other databases
    report ``exact_limit`` + 1 rows: the first pages are reachable, the total is "more than".
    """

    exact_limit = dashboard.EXACT_COUNT_LIMIT

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.estimated = False

    @cached_property
    def count(self) -> int:
        qs = self.object_list
        if not isinstance(qs, QuerySet):
            return len(qs)
        count, self.estimated = dashboard.bounded_count(qs, self.exact_limit)
        return count


# --- filters ------------------------------------------------------------------------------------


class TopicFilter(admin.SimpleListFilter):
    """Topics from the event and subscriber registries (no SELECT DISTINCT over the table)."""

    title = "topic"
    parameter_name = "topic"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        topics = set(known_topics()) | {s.topic for s in all_subscriptions()}
        return [(t, t) for t in sorted(topics)]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        return queryset.filter(topic=value) if value else queryset


class GroupFilter(admin.SimpleListFilter):
    """Subscriber groups from the registry."""

    title = "group"
    parameter_name = "group"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(g, g) for g in sorted({s.group for s in all_subscriptions()})]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        return queryset.filter(group=value) if value else queryset


SEARCH_HELP = (
    "A message id finds that message (and, for a correlation id, its whole chain); other text "
    "matches topics. Prefix with content: to search payloads (a full scan on big tables), "
    "or with topic: to match topics only."
)


def _parse_uuid(text: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(text)
    except ValueError:
        return None


def _topic_query(term: str) -> Q:
    """Topics that contain ``term`` (looked up in the registries, then matched exactly, so
    the topic index is used) or equal it (a topic this process no longer declares)."""
    needle = term.lower()
    topics = set(known_topics()) | {s.topic for s in all_subscriptions()}
    return Q(topic__in=sorted({t for t in topics if needle in t.lower()} | {term}))


# --- the message admins -------------------------------------------------------------------------


class MessageAdmin(admin.ModelAdmin):
    """Shared by both message admins: read-only, estimated counts, indexed search and sort."""

    show_full_result_count = False
    # Facet counts ("Show counts") are a COUNT per filter choice over the whole table.
    show_facets = admin.ShowFacets.NEVER
    paginator = EstimatedCountPaginator
    list_per_page = 50
    # Sorting another column would sort the whole table.
    sortable_by = ("created_at",)
    search_fields = ("topic",)  # shows the search box; get_search_results does the work
    search_help_text = SEARCH_HELP
    date_hierarchy = None

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Nobody edits a message; the change permission (asked with obj=None) gates actions.
        if obj is not None:
            return False
        return super().has_change_permission(request)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        sets: Any = self.get_fieldsets(request, obj)
        return [str(name) for _, opts in sets for name in opts["fields"]]

    @admin.display(description="status", ordering="status")
    def badge(self, obj: PublishedMessage | ReceivedMessage) -> SafeString:
        return status_badge(obj.status)

    @admin.display(description="last error")
    def error_summary(self, obj: PublishedMessage | ReceivedMessage) -> str:
        first = obj.last_error.split("\n", 1)[0]
        return first if len(first) <= 120 else first[:117] + "..."

    @admin.display(description="last error")
    def error_detail(self, obj: PublishedMessage | ReceivedMessage) -> SafeString | str:
        if not obj.last_error:
            return "-"
        summary, _, rest = obj.last_error.partition("\n")
        if not rest.strip():
            return format_html('<strong class="ie-error">{}</strong>', summary)
        return format_html(
            '<strong class="ie-error">{}</strong><pre class="ie-traceback" '
            'style="white-space:pre-wrap;max-height:30em;overflow:auto">{}</pre>',
            summary, rest.strip("\n"),
        )

    def _search_common(self, term: str) -> tuple[str, str]:
        kind, sep, rest = term.partition(":")
        if sep and kind.strip().lower() in ("content", "topic"):
            return kind.strip().lower(), rest.strip()
        return "", term

    def _changelist_url(self, model: type[Any], **params: str) -> str:
        url = reverse(f"admin:integration_events_{model._meta.model_name}_changelist",
                      current_app=self.admin_site.name)
        if params:
            from urllib.parse import urlencode

            url += "?" + urlencode(params)
        return url

    def _change_url(self, obj: Any) -> str:
        return reverse(
            f"admin:integration_events_{obj._meta.model_name}_change", args=[obj.pk],
            current_app=self.admin_site.name,
        )

    def _report(self, request: HttpRequest, done: int, selected: int, verb: str,
                skipped_why: str) -> None:
        self.message_user(request, f"{done} message(s) {verb}.", messages.SUCCESS)
        if done < selected:
            self.message_user(
                request, f"{selected - done} selected message(s) skipped: {skipped_why}.",
                messages.WARNING,
            )


ACTION_BATCH_SIZE = 1000


def _in_batches(operation: Callable[..., int], queryset: QuerySet[Any]) -> tuple[int, int]:
    """Hand the selected keys to ``operation`` a thousand at a time, walking the primary key
    (so "select all" over a big filtered list neither loads every row nor builds one giant IN
    list, and rows the operation changes cannot upset the walk).
    Returns (rows the operation changed, rows selected)."""
    done = selected = 0
    keys = queryset.order_by("pk").values_list("pk", flat=True)
    last: Any = None
    while True:
        batch = list((keys if last is None else keys.filter(pk__gt=last))[:ACTION_BATCH_SIZE])
        if not batch:
            return done, selected
        done += operation(batch, using=queryset.db)
        selected += len(batch)
        last = batch[-1]


def _pretty_content(content: str) -> str:
    try:
        return json.dumps(json.loads(content), indent=2, sort_keys=True, ensure_ascii=False)
    except ValueError:
        return content  # corrupt JSON is shown as stored (and failed by the worker)


def _pre(text: str) -> SafeString:
    return format_html(
        '<pre class="ie-json" style="white-space:pre-wrap;max-height:40em;overflow:auto;'
        'margin:0">{}</pre>', text,
    )


@admin.register(PublishedMessage)
class PublishedMessageAdmin(MessageAdmin):
    list_display = ("id", "topic", "badge", "attempts", "created_at", "next_attempt_at",
                    "error_summary")
    list_filter = ("status", TopicFilter, ("created_at", admin.DateFieldListFilter))
    actions = ("requeue", "publish_now")
    fieldsets = (
        (None, {"fields": ("id", "topic", "badge", "attempts", "created_at", "next_attempt_at",
                           "finished_at", "expires_at", "claimed_by", "lease_until",
                           "error_detail")}),
        # Received over a broker bridge: the bridge and the sender's message id (blank: local).
        ("Origin", {"fields": ("origin", "wire_id")}),
        ("Payload", {"fields": ("payload",)}),
        ("Headers", {"fields": ("header_table",)}),
        ("Correlation", {"fields": ("correlation_id", "correlation_sequence", "caused_by",
                                    "caused")}),
        ("Received by", {"fields": ("receipts",)}),
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet[PublishedMessage]:
        # Lists never show the payload or the headers: do not read them for 50 rows.
        return super().get_queryset(request).defer("content", "headers")

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[PublishedMessage], search_term: str
    ) -> tuple[QuerySet[PublishedMessage], bool]:
        term = search_term.strip()
        if not term:
            return queryset, False
        kind, value = self._search_common(term)
        if kind == "content":
            return queryset.filter(content__icontains=value), False
        if kind == "topic":
            return queryset.filter(_topic_query(value)), False
        key = _parse_uuid(term)
        if key is not None:
            return queryset.filter(Q(pk=key) | Q(correlation_id=key)), False
        return queryset.filter(_topic_query(term)), False

    # --- detail -------------------------------------------------------------------------------

    @admin.display(description="payload")
    def payload(self, obj: PublishedMessage) -> SafeString:
        return _pre(_pretty_content(obj.content))

    @admin.display(description="headers")
    def header_table(self, obj: PublishedMessage) -> SafeString:
        return _header_table(obj.message_headers)

    @admin.display(description="caused by")
    def caused_by(self, obj: PublishedMessage) -> SafeString | str:
        if obj.causation_id is None:
            return "- (first message of its chain)"
        cause = PublishedMessage.objects.using(obj._state.db).filter(pk=obj.causation_id).first()
        if cause is None:
            return format_html("{} (no longer stored)", obj.causation_id)
        return format_html('<a href="{}">{}</a> {}', self._change_url(cause), cause.topic,
                           cause.pk)

    @admin.display(description="caused")
    def caused(self, obj: PublishedMessage) -> SafeString | str:
        rows = list(
            PublishedMessage.objects.using(obj._state.db).filter(causation_id=obj.pk)
            .order_by("created_at")[:51]
        )
        if not rows:
            return "-"
        links = format_html_join(
            "", '<li><a href="{}">{}</a> {} {}</li>',
            ((self._change_url(r), r.topic, r.pk, status_badge(r.status)) for r in rows[:50]),
        )
        chain = self._changelist_url(PublishedMessage, q=str(obj.correlation_id))
        more = format_html('<li><a href="{}">whole chain…</a></li>', chain)
        return format_html('<ul style="margin:0;padding-left:1.2em">{}{}</ul>', links, more)

    @admin.display(description="received rows")
    def receipts(self, obj: PublishedMessage) -> SafeString | str:
        rows = list(obj.receipts.order_by("group"))
        if not rows:
            return "- (not fanned out yet, or no subscribers)"
        body = format_html_join(
            "",
            '<tr><td><a href="{}">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>',
            ((self._change_url(r), r.group, status_badge(r.status), r.attempts,
              r.handler, r.last_error.split("\n", 1)[0]) for r in rows),
        )
        return format_html(
            '<table class="ie-receipts"><thead><tr><th>group</th><th>status</th>'
            "<th>attempts</th><th>handler</th><th>last error</th></tr></thead>"
            "<tbody>{}</tbody></table>", body,
        )

    # --- actions ------------------------------------------------------------------------------

    @admin.action(description="Requeue selected messages (failed or succeeded)",
                  permissions=["change"], **ON_DETAIL_PAGE_TOO)
    def requeue(self, request: HttpRequest, queryset: QuerySet[PublishedMessage]) -> None:
        done, selected = _in_batches(operations.requeue_published, queryset)
        self._report(request, done, selected, "requeued",
                     "only failed or succeeded messages can be requeued")

    @admin.action(description="Publish selected delayed messages now", permissions=["change"],
                  **ON_DETAIL_PAGE_TOO)
    def publish_now(self, request: HttpRequest, queryset: QuerySet[PublishedMessage]) -> None:
        done, selected = _in_batches(operations.publish_now, queryset)
        self._report(request, done, selected, "made due now",
                     "only pending or retrying messages wait for their time")

    # --- dashboard pages ----------------------------------------------------------------------

    def get_urls(self) -> list[URLPattern]:
        def wrap(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
            return self.admin_site.admin_view(view)

        custom = [
            path("dashboard/", wrap(self.overview_view), name="integration_events_overview"),
            path("dashboard/live.json", wrap(self.live_view), name="integration_events_live"),
            path("dashboard/subscribers/", wrap(self.subscribers_view),
                 name="integration_events_subscribers"),
            path("dashboard/nodes/", wrap(self.nodes_view), name="integration_events_nodes"),
        ]
        # Before the defaults: "<path:object_id>/" would swallow "dashboard/".
        return custom + super().get_urls()

    def dashboard_allowed(self, request: HttpRequest) -> bool:
        """Staff (checked by admin_view) with view permission on both message models."""
        received_admin = self.admin_site.get_model_admin(ReceivedMessage)
        return self.has_view_permission(request) and received_admin.has_view_permission(request)

    def _dashboard_context(self, request: HttpRequest, title: str, page: str) -> dict[str, Any]:
        if not self.dashboard_allowed(request):
            raise PermissionDenied
        return {
            **self.admin_site.each_context(request),
            "title": title,
            "opts": self.model._meta,
            "app_label": self.model._meta.app_label,
            "ie_page": page,
            "ie_crumb": title.split(": ", 1)[-1].capitalize(),
        }

    def overview_view(self, request: HttpRequest) -> HttpResponse:
        context = self._dashboard_context(request, "Integration events: overview", "overview")
        using = self.get_queryset(request).db
        now = timezone.now()
        live = dashboard.live_rates(now, using)
        context.update(
            live=live,
            history=dashboard.history(now, using),
            published_total=sum(live["published"].values()),
            dead_letters=live["published"]["failed"] + sum(
                counts["failed"] for counts in live["received"].values()),
            statuses=[(s.value, s.label, status_badge(s.value)) for s in MessageStatus],
            published_rows=[
                (s.value, status_badge(s.value), live["published"][s.value],
                 f"published:{s.value}" in live["estimated"])
                for s in MessageStatus
            ],
            received_rows=[
                (group, [(s.value, counts[s.value], f"received:{group}:{s.value}"
                          in live["estimated"]) for s in MessageStatus])
                for group, counts in live["received"].items()
            ],
            exact_limit=dashboard.EXACT_COUNT_LIMIT,
            lag_published=dashboard.format_age(live["lag"]["published"]),
            lag_received=dashboard.format_age(live["lag"]["received"]),
            live_url=reverse("admin:integration_events_live", current_app=self.admin_site.name),
            published_url=self._changelist_url(PublishedMessage),
            received_url=self._changelist_url(ReceivedMessage),
        )
        return TemplateResponse(request, "integration_events/admin/overview.html", context)

    def live_view(self, request: HttpRequest) -> JsonResponse:
        if not self.dashboard_allowed(request):
            return JsonResponse({"error": "permission denied"}, status=403)
        return JsonResponse(dashboard.live_rates(using=self.get_queryset(request).db))

    def subscribers_view(self, request: HttpRequest) -> HttpResponse:
        context = self._dashboard_context(request, "Integration events: subscribers",
                                          "subscribers")
        topics = dashboard.subscriber_topics()
        context.update(
            topics=topics,
            orphaned=[t for t in topics if t.orphaned],
            undeclared=[t for t in topics if t.undeclared],
        )
        return TemplateResponse(request, "integration_events/admin/subscribers.html", context)

    def nodes_view(self, request: HttpRequest) -> HttpResponse:
        context = self._dashboard_context(request, "Integration events: nodes", "nodes")
        infos, unassigned = dashboard.nodes(using=self.get_queryset(request).db)
        context.update(nodes=infos, unassigned=unassigned, now=timezone.now(),
                       stale_minutes=int(dashboard.STALE_AFTER.total_seconds() // 60))
        return TemplateResponse(request, "integration_events/admin/nodes.html", context)

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None
                        ) -> HttpResponse:
        extra = {"ie_page": "published", **(extra_context or {})}
        return super().changelist_view(request, extra)


def _header_table(headers: dict[str, Any]) -> SafeString:
    rows = format_html_join(
        "", "<tr><th>{}</th><td><code>{}</code></td></tr>",
        ((key, value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))
         for key, value in sorted(headers.items())),
    )
    return format_html('<table class="ie-headers">{}</table>', rows)


@admin.register(ReceivedMessage)
class ReceivedMessageAdmin(MessageAdmin):
    list_display = ("id", "topic", "group", "badge", "attempts", "created_at",
                    "next_attempt_at", "error_summary")
    list_filter = ("status", GroupFilter, TopicFilter, ("created_at", admin.DateFieldListFilter))
    actions = ("reexecute",)
    search_help_text = (
        "A message id finds its received rows (one per group); a number finds that row; other "
        "text matches topics. Prefix with content: to search payloads (a full scan on big "
        "tables), or with topic: to match topics only."
    )
    fieldsets = (
        (None, {"fields": ("id", "message_link", "topic", "group", "handler", "badge",
                           "attempts", "created_at", "next_attempt_at", "finished_at",
                           "expires_at", "claimed_by", "lease_until")}),
        ("Last error", {"fields": ("error_detail",)}),
        ("Payload", {"fields": ("payload",)}),
        ("Headers", {"fields": ("header_table",)}),
    )

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[ReceivedMessage], search_term: str
    ) -> tuple[QuerySet[ReceivedMessage], bool]:
        term = search_term.strip()
        if not term:
            return queryset, False
        kind, value = self._search_common(term)
        if kind == "content":
            return queryset.filter(message__content__icontains=value), False
        if kind == "topic":
            return queryset.filter(_topic_query(value)), False
        key = _parse_uuid(term)
        if key is not None:
            return queryset.filter(message_id=key), False
        if term.isdigit():
            return queryset.filter(pk=int(term)), False
        return queryset.filter(_topic_query(term)), False

    @admin.display(description="message")
    def message_link(self, obj: ReceivedMessage) -> SafeString:
        return format_html('<a href="{}">{}</a>', self._change_url(obj.message), obj.message_id)

    @admin.display(description="payload")
    def payload(self, obj: ReceivedMessage) -> SafeString:
        return _pre(_pretty_content(obj.message.content))

    @admin.display(description="headers")
    def header_table(self, obj: ReceivedMessage) -> SafeString:
        return _header_table(obj.message_headers)

    @admin.action(description="Re-execute selected messages", permissions=["change"],
                  **ON_DETAIL_PAGE_TOO)
    def reexecute(self, request: HttpRequest, queryset: QuerySet[ReceivedMessage]) -> None:
        done, selected = _in_batches(operations.reexecute_received, queryset)
        self._report(request, done, selected, "queued to run again",
                     "a message being processed now cannot be re-executed")

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None
                        ) -> HttpResponse:
        extra = {"ie_page": "received", **(extra_context or {})}
        return super().changelist_view(request, extra)


@admin.register(WorkerNode)
class WorkerNodeAdmin(admin.ModelAdmin):
    """Heartbeat rows (the Nodes dashboard page adds the claims each node holds)."""

    list_display = ("name", "hostname", "pid", "started_at", "last_seen_at", "processed")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None
                        ) -> HttpResponse:
        extra = {"ie_page": "nodes", **(extra_context or {})}
        return super().changelist_view(request, extra)


@admin.register(Dashboard)
class DashboardAdmin(admin.ModelAdmin):
    """The "Dashboard" entry on the admin index: opens the overview. Visible to whoever may
    see the overview (view permission on both message models), and only to them."""

    def _published_admin(self) -> PublishedMessageAdmin:
        return self.admin_site.get_model_admin(PublishedMessage)  # type: ignore[return-value]

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return obj is None and self._published_admin().dashboard_allowed(request)

    def has_module_permission(self, request: HttpRequest) -> bool:
        return self._published_admin().has_module_permission(request)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None
                        ) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        return HttpResponseRedirect(reverse(f"{self.admin_site.name}:integration_events_overview"))
