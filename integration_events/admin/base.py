"""What both message admins share: read-only rows, bounded counts, filters from the
registries, one search, and only the filters and orderings the pages offer.

Everything is built to stay fast on tables with millions of rows: no full COUNT(*) (an
estimating paginator), no SELECT DISTINCT for filter choices (they come from the registries),
searches that use an index unless the user asks for a content scan, sorting only on indexed
columns, no date hierarchy (its year/month links are SELECT DISTINCT over the table), and no
lookup a URL could add beyond the filters in the sidebar.
"""

from __future__ import annotations

import uuid
from typing import Any, ClassVar
from urllib.parse import urlencode

from django.contrib import admin, messages
from django.contrib.admin.views.main import SEARCH_VAR, ChangeList
from django.core.paginator import Paginator
from django.db.models import Q, QuerySet
from django.db.models.expressions import Combinable
from django.http import HttpRequest, HttpResponse, QueryDict
from django.urls import reverse
from django.utils.functional import cached_property
from django.utils.html import format_html
from django.utils.safestring import SafeString

from .. import dashboard
from ..events import known_topics
from ..models import ACTIVE_STATUSES, PublishedMessage, ReceivedMessage
from ..registry import all_subscriptions
from . import display, permissions

# Longest filter value or search text accepted (a topic's column is 255 characters). Longer
# input is refused with a message: SQLite rejects LIKE patterns over 50,000 bytes, and every
# link on the page repeats the current parameters.
MAX_INPUT_LENGTH = 255
# A received row's id is a 64-bit signed integer.
MAX_ROW_ID = 2**63 - 1

SEARCH_HELP = (
    "A message id finds that message (and, for a correlation id, its whole chain); other text "
    "matches topics. Prefix with content: to search payloads (a full scan on big tables), "
    "or with topic: to match topics only."
)


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


def registry_topics() -> set[str]:
    return set(known_topics()) | {s.topic for s in all_subscriptions()}


class TopicFilter(admin.SimpleListFilter):
    """Topics from the event and subscriber registries (no SELECT DISTINCT over the table)."""

    title = "topic"
    parameter_name = "topic"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(t, t) for t in sorted(registry_topics())]

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


def parse_search(term: str) -> tuple[str, str]:
    """("content" | "topic" | "", the text to look for)."""
    kind, sep, rest = term.partition(":")
    if sep and kind.strip().lower() in ("content", "topic"):
        return kind.strip().lower(), rest.strip()
    return "", term


def parse_uuid(text: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(text)
    except ValueError:
        return None


def parse_row_id(text: str) -> int | None:
    """A positive 64-bit row id written in ASCII digits ("²" and "٣" are digits to Python's
    isdigit(), and int() takes the latter), else None."""
    if not (text.isascii() and text.isdecimal()) or len(text) > 19:
        return None
    number = int(text)
    return number if 0 < number <= MAX_ROW_ID else None


def topic_query(term: str) -> Q:
    """Topics that contain ``term`` (looked up in the registries, then matched exactly, so
    the topic index is used) or equal it (a topic this process no longer declares)."""
    needle = term.lower()
    return Q(topic__in=sorted({t for t in registry_topics() if needle in t.lower()} | {term}))


class OfferedOrderingChangeList(ChangeList):
    """Applies ``?o=`` only to the columns in ``sortable_by`` (Django hides the other headers'
    links but would still sort by them, a full sort of the table)."""

    def get_ordering_field(self, field_name: Any) -> str | Combinable | None:
        if field_name not in (self.sortable_by or ()):
            return None
        return super().get_ordering_field(field_name)


class MessageAdmin(admin.ModelAdmin):
    """Shared by both message admins: read-only, estimated counts, indexed search and sort."""

    # The tab of the dashboard's navigation this admin's pages belong to.
    ie_page: ClassVar[str] = ""
    # The only query parameters a list accepts besides q, o, p: those of its sidebar filters.
    allowed_lookups: ClassVar[frozenset[str]] = frozenset()
    # How a content: search reaches the payload.
    content_lookup: ClassVar[str] = "content__icontains"

    show_full_result_count = False
    # Facet counts ("Show counts") are a COUNT per filter choice over the whole table.
    show_facets = admin.ShowFacets.NEVER
    paginator = EstimatedCountPaginator
    list_per_page = 50
    # Sorting another column would sort the whole table.
    sortable_by = ("created",)
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

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return OfferedOrderingChangeList

    def lookup_allowed(self, lookup: str, value: str, request: HttpRequest) -> bool:
        return lookup in self.allowed_lookups

    # --- columns ------------------------------------------------------------------------------

    @admin.display(description="status")
    def badge(self, obj: PublishedMessage | ReceivedMessage) -> SafeString:
        return display.status_badge(obj.status)

    @admin.display(description="status")
    def status_and_due(self, obj: PublishedMessage | ReceivedMessage) -> SafeString:
        """The badge and, for a row waiting for its next attempt, when that is."""
        if obj.status not in ACTIVE_STATUSES:
            return display.status_badge(obj.status)
        return format_html('{}<div class="ie-due">next attempt {}</div>',
                           display.status_badge(obj.status), display.when(obj.next_attempt_at))

    @admin.display(description="topic")
    def topic_path(self, obj: PublishedMessage | ReceivedMessage) -> SafeString:
        return display.breakable(obj.topic)

    @admin.display(description="created", ordering="created_at")
    def created(self, obj: PublishedMessage | ReceivedMessage) -> str:
        return display.when(obj.created_at)

    @admin.display(description="next attempt")
    def next_attempt(self, obj: PublishedMessage | ReceivedMessage) -> str:
        return display.when(obj.next_attempt_at)

    @admin.display(description="finished")
    def finished(self, obj: PublishedMessage | ReceivedMessage) -> str:
        return display.when(obj.finished_at)

    @admin.display(description="expires")
    def expires(self, obj: PublishedMessage | ReceivedMessage) -> str:
        return display.when(obj.expires_at)

    @admin.display(description="lease until")
    def lease(self, obj: PublishedMessage | ReceivedMessage) -> str:
        return display.when(obj.lease_until)

    @admin.display(description="last error")
    def error_summary(self, obj: PublishedMessage | ReceivedMessage) -> SafeString | str:
        return display.error_cell(obj)

    @admin.display(description="last error")
    def error_detail(self, obj: PublishedMessage | ReceivedMessage) -> SafeString | str:
        return display.error_block(obj)

    @admin.display(description="earlier attempt's error")
    def error_history(self, obj: PublishedMessage | ReceivedMessage) -> SafeString | str:
        return display.error_block(obj)

    @admin.display(description="outcome")
    def error_note(self, obj: PublishedMessage | ReceivedMessage) -> SafeString | str:
        return display.error_block(obj)

    @staticmethod
    def error_field(obj: Any) -> str:
        """The detail page's error field, named by what the stored text is for this row."""
        return {"note": "error_note", "history": "error_history"}.get(
            display.error_kind(obj), "error_detail")

    # --- search -------------------------------------------------------------------------------

    def search_by_key(self, key: uuid.UUID) -> Q:
        raise NotImplementedError

    def search_by_row_id(self, number: int) -> Q | None:
        return None

    def may_search_content(self, request: HttpRequest) -> bool:
        return True

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Any], search_term: str
    ) -> tuple[QuerySet[Any], bool]:
        term = search_term.strip()
        if not term:
            return queryset, False
        if getattr(request, "_ie_search_refused", False):
            return queryset.none(), False
        kind, value = parse_search(term)
        if kind == "content":
            if not self.may_search_content(request):
                self.message_user(request, f"Searching payloads is {permissions.PAYLOAD_HIDDEN}.",
                                  messages.WARNING)
                return queryset.none(), False
            return queryset.filter(**{self.content_lookup: value}), False
        if kind == "topic":
            return queryset.filter(topic_query(value)), False
        key = parse_uuid(term)
        if key is not None:
            return queryset.filter(self.search_by_key(key)), False
        number = parse_row_id(term)
        by_number = self.search_by_row_id(number) if number is not None else None
        if by_number is not None:
            return queryset.filter(by_number), False
        return queryset.filter(topic_query(term)), False

    # --- bad input ----------------------------------------------------------------------------

    def refuse_bad_input(self, request: HttpRequest) -> None:
        """Drop filter values no row can match (a NUL character, which PostgreSQL cannot even
        compare) or too long to be a value; refuse such a search (an empty result). Each with
        a message, and never echoing the whole input back."""
        cleaned = QueryDict(mutable=True)
        changed = False
        for key, values in request.GET.lists():
            for value in values:
                problem = ("contains a NUL character" if "\x00" in key + value
                           else f"is too long (over {MAX_INPUT_LENGTH} characters)"
                           if len(value) > MAX_INPUT_LENGTH or len(key) > MAX_INPUT_LENGTH
                           else "")
                if not problem:
                    cleaned.appendlist(key, value)
                    continue
                changed = True
                if key == SEARCH_VAR:
                    request._ie_search_refused = True  # type: ignore[attr-defined]
                    cleaned.appendlist(key, value.replace("\x00", "")[:MAX_INPUT_LENGTH])
                    self.message_user(request, f"Nothing searched: the search text {problem}.",
                                      messages.ERROR)
                else:
                    name = key.replace("\x00", "")[:40]
                    self.message_user(request, f"The {name} filter was ignored: its value "
                                      f"{problem}.", messages.ERROR)
        if changed:
            cleaned._mutable = False
            request.GET = cleaned  # type: ignore[assignment]  # immutable again, as Django's

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None
                        ) -> HttpResponse:
        self.refuse_bad_input(request)
        return super().changelist_view(request, extra_context)

    # --- links and reports --------------------------------------------------------------------

    def changelist_url(self, model: type[Any], **params: str) -> str:
        url = reverse(f"admin:integration_events_{model._meta.model_name}_changelist",
                      current_app=self.admin_site.name)
        return url + ("?" + urlencode(params) if params else "")

    def change_url(self, obj: Any) -> str:
        return reverse(
            f"admin:integration_events_{obj._meta.model_name}_change", args=[obj.pk],
            current_app=self.admin_site.name,
        )

    def report(self, request: HttpRequest, done: int, selected: int, verb: str,
               skipped_why: str) -> None:
        self.message_user(request, f"{done} message(s) {verb}.", messages.SUCCESS)
        if done < selected:
            self.message_user(
                request, f"{selected - done} selected message(s) skipped: {skipped_why}.",
                messages.WARNING,
            )
