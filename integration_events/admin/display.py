"""How the admin shows values: status badges, dates, durations, identifiers, errors, payloads
and headers. Everything here returns escaped HTML (``format_html``) or plain text."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from django.utils import timezone
from django.utils.dateformat import format as date_format
from django.utils.html import escape, format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe

from ..models import MessageStatus

STATUS_COLOURS: dict[str, str] = {
    MessageStatus.PENDING: "#6c757d",
    MessageStatus.PROCESSING: "#0d6efd",
    MessageStatus.RETRYING: "#fd7e14",
    MessageStatus.SUCCEEDED: "#198754",
    MessageStatus.FAILED: "#dc3545",
    MessageStatus.SKIPPED: "#6f42c1",
}

# One date format on every page of the dashboard (lists, details, nodes, tables).
DATETIME_FORMAT = "Y-m-d H:i:s"

# What the worker stores as last_error when it dispatched a message that no group subscribes
# to: an outcome, not an error.
NO_SUBSCRIBERS = "no subscribers: nothing to deliver"

# A row's last_error is the current error only while it is retrying or has failed; on any
# other row it is what an earlier attempt raised.
ERROR_STATUSES = (MessageStatus.RETRYING, MessageStatus.FAILED)


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


def when(value: datetime | None) -> str:
    """A date and time in the current time zone, as "2026-12-01 09:32:11" ("-" for None)."""
    if value is None:
        return "-"
    return date_format(timezone.localtime(value) if timezone.is_aware(value) else value,
                       DATETIME_FORMAT)


def duration(seconds: float | None) -> str:
    """Seconds for people: "0.5 s", "5 s", "1 min 30 s", "1 h", "2 h 5 min", "1 d 2 h"."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.3g} s" if seconds != int(seconds) else f"{int(seconds)} s"
    whole = int(round(seconds))
    for unit, size, sub, sub_size in (("d", 86400, "h", 3600), ("h", 3600, "min", 60),
                                      ("min", 60, "s", 1)):
        if whole >= size:
            major, rest = divmod(whole, size)
            minor = rest // sub_size
            return f"{major} {unit}" + (f" {minor} {sub}" if minor else "")
    return f"{whole} s"  # not reached: whole >= 60 here


def breakable(text: str) -> SafeString:
    """``text`` escaped, with a line-break opportunity after each dot, so that dotted paths
    and topics wrap between their parts, never inside a word."""
    return mark_safe(escape(text).replace(".", ".<wbr>"))  # escaped just above


# --- errors -----------------------------------------------------------------------------------


def error_kind(obj: Any) -> str:
    """"error" (the row is retrying or failed because of it), "history" (an earlier attempt's
    error on a row that has moved on), "note" (an outcome stored in last_error) or ""."""
    if not obj.last_error:
        return ""
    if obj.last_error == NO_SUBSCRIBERS:
        return "note"
    return "error" if obj.status in ERROR_STATUSES else "history"


def first_line(text: str, limit: int = 160) -> str:
    line = text.split("\n", 1)[0]
    return line if len(line) <= limit else line[: limit - 1] + "…"


def error_cell(obj: Any) -> SafeString | str:
    """The list column: the first line of the error, styled by what it is."""
    kind = error_kind(obj)
    if not kind:
        return ""
    if kind == "note":
        return format_html('<span class="ie-note">{}</span>', obj.last_error)
    if kind == "history":
        line = first_line(obj.last_error, 1000)
        return format_html('<span class="ie-history" title="an earlier attempt: {}">earlier '
                           "attempt: {}</span>", line, line)
    line = first_line(obj.last_error, 1000)  # the cell shows three lines; hover for the rest
    return format_html('<span class="ie-error" title="{}">{}</span>', line, line)


def error_block(obj: Any) -> SafeString | str:
    """The detail page: the error's first line and, folded for history, its traceback."""
    kind = error_kind(obj)
    if not kind:
        return "-"
    if kind == "note":
        return format_html('<span class="ie-note">{}</span>', obj.last_error)
    summary, _, rest = obj.last_error.partition("\n")
    rest = rest.strip("\n")
    traceback = format_html('<pre class="ie-traceback">{}</pre>', rest) if rest.strip() else ""
    if kind == "error":
        return format_html('<strong class="ie-error">{}</strong>{}', summary, traceback)
    if traceback:
        traceback = format_html("<details><summary>traceback</summary>{}</details>", traceback)
    return format_html(
        '<span class="ie-history">Earlier attempt (the row has moved on since): {}</span>{}',
        summary, traceback,
    )


# --- payloads and headers ---------------------------------------------------------------------


def pretty_content(content: str) -> str:
    """Stored content as indented JSON, or as stored when it is not JSON the admin can indent
    (corrupt, or nested too deep to decode: the worker fails such a message with a reason)."""
    try:
        return json.dumps(json.loads(content), indent=2, sort_keys=True, ensure_ascii=False)
    except (ValueError, TypeError, RecursionError):
        return content


def pre(text: str) -> SafeString:
    return format_html('<pre class="ie-json">{}</pre>', text)


def _header_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        return repr(value)


def header_table(stored: Any, derived: Iterable[tuple[str, Any]]) -> SafeString:
    """The stored headers (whatever JSON they hold) plus those kept in columns."""
    rows: list[tuple[str, Any]] = []
    note = ""
    if isinstance(stored, dict):
        rows.extend((str(k), v) for k, v in stored.items())
    elif stored not in (None, {}):
        note = format_html(
            '<p class="ie-note">The stored headers are not a JSON object: {}</p>',
            _header_value(stored))
    rows.extend(derived)
    body = format_html_join(
        "", "<tr><th>{}</th><td><code>{}</code></td></tr>",
        ((key, _header_value(value)) for key, value in sorted(dict(rows).items())),
    )
    return format_html('{}<table class="ie-headers">{}</table>', note, body)
