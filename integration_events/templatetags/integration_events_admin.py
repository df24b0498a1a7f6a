"""Template filters of the admin dashboard: ``{% load integration_events_admin %}``."""

from __future__ import annotations

from datetime import datetime

from django import template
from django.utils.safestring import SafeString

from ..admin import display

register = template.Library()


@register.filter
def ie_when(value: datetime | None) -> str:
    """The dashboard's one date format ("2026-12-01 09:32:11", local time)."""
    return display.when(value)


@register.filter
def ie_duration(seconds: float | None) -> str:
    """Seconds for people ("0.5 s", "1 h")."""
    return display.duration(seconds)


@register.filter
def ie_breakable(text: str) -> SafeString:
    """Escaped, with line-break opportunities after dots (dotted paths, topics)."""
    return display.breakable(str(text))
