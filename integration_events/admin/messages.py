"""The two message admins: lists and read-only detail pages of the outbox and the inbox."""

from __future__ import annotations

import uuid
from typing import Any

from django.contrib import admin
from django.contrib.admin.views.main import ChangeList
from django.db.models import Exists, Q, QuerySet
from django.http import HttpRequest
from django.urls import URLPattern, path
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.views.generic import RedirectView

from .. import ordering
from ..models import (
    ACTIVE_STATUSES,
    KEYED,
    MessageStatus,
    PublishedMessage,
    ReceivedMessage,
    later_receipts,
)
from . import actions, display, permissions
from .base import GroupFilter, MessageAdmin, OfferedOrderingChangeList, TopicFilter

DATE_FILTER = ("created_at", admin.DateFieldListFilter)
DATE_LOOKUPS = frozenset({"created_at__gte", "created_at__lt"})
TIMES = ("created", "next_attempt", "finished", "expires", "claimed_by", "lease")
ORDERING_FIELDS = ("ordering_key", "ordering_seq")


class KeyFilter(admin.SimpleListFilter):
    """The rows of one ordering key (``?ordering_key=``; the "blocked by" links use it). One
    seek per status on the ie_*_key index."""

    title = "ordering key"
    parameter_name = "ordering_key"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        value = self.value()
        return [(value, value)] if value else []

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        if not value:
            return queryset
        return queryset.filter(**KEYED, status__in=list(MessageStatus), ordering_key=value)


class BlockingFilter(admin.SimpleListFilter):
    """Keyed dead letters that hold back later rows of their key (the overview links here)."""

    title = "ordering"
    parameter_name = "blocking"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", "dead letters blocking their key")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() != "yes":
            return queryset
        return queryset.filter(status=MessageStatus.FAILED, ordering_key__gt="").filter(
            Exists(later_receipts()))


def _column_headers(obj: PublishedMessage) -> list[tuple[str, Any]]:
    """The headers kept in columns of their own (see PublishedMessage.message_headers)."""
    derived: list[tuple[str, Any]] = [
        ("message-id", str(obj.pk)), ("topic", obj.topic),
        ("correlation-id", str(obj.correlation_id)),
        ("correlation-sequence", obj.correlation_sequence),
    ]
    if obj.causation_id:
        derived.append(("causation-id", str(obj.causation_id)))
    return derived


@admin.register(PublishedMessage)
class PublishedMessageAdmin(MessageAdmin):
    ie_page = "published"
    list_display = ("id", "topic_path", "status_and_due", "attempts", "created",
                    "error_summary")
    list_filter = ("status", TopicFilter, DATE_FILTER, KeyFilter)
    allowed_lookups = frozenset({"status__exact", "topic", "ordering_key"}) | DATE_LOOKUPS
    actions = (actions.requeue, actions.publish_now, actions.skip_published)

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> Any:
        main: tuple[str, ...] = ("id", "topic", "badge", "attempts", *TIMES)
        if obj is not None and obj.ordering_key:
            main += ORDERING_FIELDS
        sets: list[tuple[str | None, dict[str, Any]]] = [(None, {"fields": main})]
        if obj is not None and obj.origin:
            # Received over a broker bridge: where it came from, and its id there.
            sets.append(("Origin", {"fields": ("origin", "wire_id")}))
        if obj is not None and obj.last_error:
            sets.append(("Outcome" if display.error_kind(obj) == "note" else "Error",
                         {"fields": (self.error_field(obj),)}))
        sets += [
            ("Payload", {"fields": ("payload",)}),
            ("Headers", {"fields": ("header_table",)}),
            ("Correlation", {"fields": ("correlation_id", "correlation_sequence", "caused_by",
                                        "caused")}),
            ("Received by", {"fields": (
                "receipts" if permissions.may_view_receipts(request, self.admin_site)
                else "receipts_hidden",)}),
        ]
        return sets

    def get_urls(self) -> list[URLPattern]:
        # The dashboard used to live under this admin's URLs: old bookmarks still arrive.
        moved = [
            path(f"dashboard/{old}", RedirectView.as_view(pattern_name=f"admin:{name}"))
            for old, name in (("", "integration_events_overview"),
                              ("subscribers/", "integration_events_subscribers"),
                              ("nodes/", "integration_events_nodes"))
        ]
        return moved + super().get_urls()

    def log_deletions(self, request: HttpRequest, queryset: Any) -> Any:
        """Django logs the deleted messages; their received rows go with them (a cascade
        Django does not log), so log those too."""
        messages = list(queryset)
        if not messages:
            return super().log_deletions(request, queryset)
        rows = ReceivedMessage.objects.using(messages[0]._state.db).filter(
            message_id__in=[m.pk for m in messages]).only(*actions.AUDIT_FIELDS[ReceivedMessage])
        received_admin = self.admin_site._registry.get(ReceivedMessage)
        if received_admin is not None and rows:
            received_admin.log_deletions(request, rows)
        return super().log_deletions(request, queryset)

    def get_queryset(self, request: HttpRequest) -> QuerySet[PublishedMessage]:
        # Lists never show the payload or the headers: do not read them for 50 rows.
        return super().get_queryset(request).defer("content", "headers")

    def search_by_key(self, key: uuid.UUID) -> Q:
        return Q(pk=key) | Q(correlation_id=key)

    # --- detail -------------------------------------------------------------------------------

    @admin.display(description="payload")
    def payload(self, obj: PublishedMessage) -> SafeString:
        return display.pre(display.pretty_content(obj.content))

    @admin.display(description="headers")
    def header_table(self, obj: PublishedMessage) -> SafeString:
        return display.header_table(obj.headers, _column_headers(obj))

    @admin.display(description="caused by")
    def caused_by(self, obj: PublishedMessage) -> SafeString | str:
        if obj.causation_id is None:
            return "- (first message of its chain)"
        cause = PublishedMessage.objects.using(obj._state.db).filter(pk=obj.causation_id).first()
        if cause is None:
            return format_html("{} (no longer stored)", obj.causation_id)
        return format_html('<a href="{}">{}</a> {}', self.change_url(cause), cause.topic,
                           cause.pk)

    @admin.display(description="caused")
    def caused(self, obj: PublishedMessage) -> SafeString | str:
        rows = list(
            PublishedMessage.objects.using(obj._state.db).filter(causation_id=obj.pk)
            .only("topic", "status").order_by("created_at")[:51]
        )
        if not rows:
            return "-"
        links = format_html_join(
            "", '<li><a href="{}">{}</a> {} {}</li>',
            ((self.change_url(r), r.topic, r.pk, display.status_badge(r.status))
             for r in rows[:50]),
        )
        chain = self.changelist_url(PublishedMessage, q=str(obj.correlation_id))
        more = format_html('<li><a href="{}">whole chain…</a></li>', chain)
        return format_html('<ul class="ie-chain">{}{}</ul>', links, more)

    @admin.display(description="received rows")
    def receipts_hidden(self, obj: PublishedMessage) -> str:
        return f"- ({permissions.RECEIPTS_HIDDEN})"

    @admin.display(description="received rows")
    def receipts(self, obj: PublishedMessage) -> SafeString | str:
        rows = list(obj.receipts.order_by("group"))
        if not rows:
            return "- (not fanned out yet, or no subscribers)"
        body = format_html_join(
            "",
            '<tr><td><a href="{}">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>',
            ((self.change_url(r), r.group, display.status_badge(r.status), r.attempts,
              display.breakable(r.handler), display.error_cell(r)) for r in rows),
        )
        return format_html(
            '<table class="ie-receipts"><thead><tr><th>group</th><th>status</th>'
            "<th>attempts</th><th>handler</th><th>last error</th></tr></thead>"
            "<tbody>{}</tbody></table>", body,
        )


# A row's blocker not looked up yet (the change view; a list looks its page up at once).
_UNKNOWN: Any = object()


class ReceivedChangeList(OfferedOrderingChangeList):
    """The received list: what blocks each waiting keyed row of the page is looked up for
    the whole page at once (``ordering.blockers``), not one or two queries per row."""

    def get_results(self, request: HttpRequest) -> None:
        super().get_results(request)
        rows = list(self.result_list)
        found = ordering.blockers(
            [r for r in rows if r.ordering_key and r.status in ACTIVE_STATUSES])
        for row in rows:
            row._ie_blocker = found.get(row.pk)


@admin.register(ReceivedMessage)
class ReceivedMessageAdmin(MessageAdmin):
    ie_page = "received"
    list_display = ("id", "topic_path", "group", "status_and_due", "attempts", "created",
                    "error_summary")
    list_filter = ("status", GroupFilter, TopicFilter, DATE_FILTER, BlockingFilter, KeyFilter)
    # error_type and handler: the triage page's links to a failure group's members.
    allowed_lookups = frozenset({"status__exact", "group", "topic", "blocking",
                                 "ordering_key", "error_type", "handler"}) | DATE_LOOKUPS
    content_lookup = "message__content__icontains"
    actions = (actions.reexecute, actions.skip)
    search_help_text = (
        "A message id finds its received rows (one per group); a number finds that row; other "
        "text matches topics. Prefix with content: to search payloads (a full scan on big "
        "tables), or with topic: to match topics only."
    )

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return ReceivedChangeList

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> Any:
        # Without view on published messages, the message's own data stays hidden.
        shown = permissions.may_view_payloads(request, self.admin_site)
        main: tuple[str, ...] = ("id", "message_link" if shown else "message_id", "topic",
                                 "group", "handler_path", "badge", "attempts", *TIMES)
        if obj is not None and obj.ordering_key:
            main += (*ORDERING_FIELDS, "blocked_by")
        sets: list[tuple[str | None, dict[str, Any]]] = [(None, {"fields": main})]
        if obj is not None and obj.last_error:
            title = {"note": "Outcome", "history": "Earlier attempt"}.get(
                display.error_kind(obj), "Last error")
            sets.append((title, {"fields": (self.error_field(obj),)}))
        sets += [("Payload", {"fields": ("payload" if shown else "payload_hidden",)}),
                 ("Headers", {"fields": ("header_table" if shown else "own_headers",)})]
        return sets

    def search_by_key(self, key: uuid.UUID) -> Q:
        return Q(message_id=key)

    # --- ordering -----------------------------------------------------------------------------

    @admin.display(description="status")
    def status_and_due(self, obj: PublishedMessage | ReceivedMessage) -> SafeString:
        """The badge, when the next attempt is due and, for a keyed row waiting behind an
        earlier one of its key, that row (a link)."""
        shown = super().status_and_due(obj)
        first = self._blocker(obj)
        if first is None:
            return shown
        return format_html('{}<div class="ie-blocked">blocked by {}</div>', shown,
                           self.blocker_link(first))

    @admin.display(description="blocked by")
    def blocked_by(self, obj: ReceivedMessage) -> SafeString | str:
        first = self._blocker(obj)
        if first is not None:
            return format_html("{} {}", self.blocker_link(first), display.status_badge(
                first.status))
        if obj.status in ACTIVE_STATUSES:
            return "- (its turn: nothing earlier of its key is unfinished in this group)"
        return "-"

    @staticmethod
    def _blocker(obj: Any) -> PublishedMessage | ReceivedMessage | None:
        if not isinstance(obj, ReceivedMessage) or not obj.ordering_key \
                or obj.status not in ACTIVE_STATUSES:
            return None
        known = obj.__dict__.get("_ie_blocker", _UNKNOWN)
        return ordering.blocker(obj) if known is _UNKNOWN else known

    def blocker_link(self, first: PublishedMessage | ReceivedMessage) -> SafeString:
        if isinstance(first, ReceivedMessage):
            return format_html('<a href="{}">#{} ({}, seq {})</a>', self.change_url(first),
                               first.pk, first.status, first.ordering_seq)
        return format_html('<a href="{}">message {} (not fanned out: {}, seq {})</a>',
                           self.change_url(first), first.pk, first.status, first.ordering_seq)

    def search_by_row_id(self, number: int) -> Q:
        return Q(pk=number)

    def may_search_content(self, request: HttpRequest) -> bool:
        return permissions.may_view_payloads(request, self.admin_site)

    @admin.display(description="handler")
    def handler_path(self, obj: ReceivedMessage) -> SafeString:
        return display.breakable(obj.handler)

    @admin.display(description="message")
    def message_link(self, obj: ReceivedMessage) -> SafeString:
        return format_html('<a href="{}">{}</a>', self.change_url(obj.message), obj.message_id)

    @admin.display(description="payload")
    def payload(self, obj: ReceivedMessage) -> SafeString:
        return display.pre(display.pretty_content(obj.message.content))

    @admin.display(description="payload")
    def payload_hidden(self, obj: ReceivedMessage) -> str:
        return f"- ({permissions.PAYLOAD_HIDDEN})"

    @staticmethod
    def _own_headers(obj: ReceivedMessage) -> list[tuple[str, Any]]:
        own: list[tuple[str, Any]] = [("group", obj.group)]
        if obj.last_error:
            own.append(("exception", display.first_line(obj.last_error, 1000)))
        return own

    @admin.display(description="headers")
    def header_table(self, obj: ReceivedMessage) -> SafeString:
        message = obj.message
        return display.header_table(message.headers,
                                    _column_headers(message) + self._own_headers(obj))

    @admin.display(description="headers")
    def own_headers(self, obj: ReceivedMessage) -> SafeString:
        return format_html("{}<p>- (the message's own headers are {})</p>",
                           display.header_table(None, self._own_headers(obj)),
                           permissions.PAYLOAD_HIDDEN)
