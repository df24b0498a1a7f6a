"""DotNetCore.CAP's header names and its sent-time text, both ways.

Read from CAP's source (src/DotNetCore.CAP/Messages/Headers.cs, Internal/
ICapPublisher.Default.cs); the table with sources is in docs/bridges.md.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta, timezone

MSG_ID = "cap-msg-id"
MSG_NAME = "cap-msg-name"
MSG_TYPE = "cap-msg-type"
MSG_GROUP = "cap-msg-group"
CORR_ID = "cap-corr-id"
CORR_SEQ = "cap-corr-seq"
SENT_TIME = "cap-senttime"
CALLBACK_NAME = "cap-callback-name"
DELAY_TIME = "cap-delaytime"
EXEC_INSTANCE_ID = "cap-exec-instance-id"
EXCEPTION = "cap-exception"

# Headers a consumer adds for itself; never sent on.
CONSUMER_ONLY = frozenset({MSG_GROUP, EXCEPTION})

# uuid5 namespace for correlation ids that are not UUIDs (CAP's are snowflake numbers).
CORRELATION_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:integration-events:cap-corr-id")


def correlation_uuid(wire_value: str) -> uuid.UUID:
    """The local correlation id for a ``cap-corr-id`` value: the UUID itself when the value
    is a canonical UUID (another service of ours sent it), else a uuid5 of the text."""
    try:
        parsed = uuid.UUID(wire_value)
    except ValueError:
        return uuid.uuid5(CORRELATION_NAMESPACE, wire_value)
    if str(parsed) == wire_value:
        return parsed
    return uuid.uuid5(CORRELATION_NAMESPACE, wire_value)


def format_sent_time(moment: datetime) -> str:
    """``moment`` as .NET prints a DateTimeOffset in the invariant culture, in UTC:
    ``05/16/2025 07:04:05 +00:00``. (CAP itself writes ``DateTimeOffset.Now.ToString()``
    or, from 7.x on, ``DateTime.Now.ToString()``: the sender's culture and local time.)"""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    elif moment.utcoffset():
        moment = moment.astimezone(UTC)
    # Not strftime: it is the slowest part of encoding a message (once per message sent).
    return (f"{moment.month:02d}/{moment.day:02d}/{moment.year:04d} "
            f"{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d} +00:00")


_DATE = r"(?P<a>\d{1,4})(?P<sep>[/.\-])\s?(?P<b>\d{1,2})(?P=sep)\s?(?P<c>\d{1,4})\.?"
_TIME = r"(?P<h>\d{1,2}):(?P<mi>\d{2})(?::(?P<s>\d{2})(?:[.,](?P<frac>\d{1,7}))?)?"
_AMPM = r"(?P<ampm>AM|PM|am|pm|a\.m\.|p\.m\.)"
_OFFSET = r"(?P<z>Z|(?P<sign>[+-])(?P<oh>\d{1,2}):?(?P<om>\d{2})?)"
_CULTURE = re.compile(
    rf"\s*{_DATE}\s+{_TIME}(?:\s*{_AMPM})?(?:\s*{_OFFSET})?\s*", re.IGNORECASE
)


def parse_sent_time(text: str, *, now: datetime | None = None) -> datetime | None:
    """Read a ``cap-senttime`` leniently; an aware datetime, or None if unreadable.

    Takes ISO 8601 and the culture-dependent shapes .NET prints (``5/16/2025 3:04:05 PM
    +08:00``, ``16.05.2025 15:04:05``, ``2025/5/16 15:04:05``...). Without an offset the
    time is the sender's local clock; it is read as UTC. A date that reads both as
    month/day and as day/month takes the reading closer to ``now``.
    """
    text = text.strip()
    if not text:
        return None
    try:
        parsed = datetime.fromisoformat(text.replace(" Z", "Z"))
    except ValueError:
        parsed = None
    if parsed is not None:
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    match = _CULTURE.fullmatch(text)
    if match is None:
        return None
    tz = _offset(match)
    if tz is None:
        return None
    candidates = [
        moment
        for year, month, day in _date_readings(match)
        for moment in [_build(match, year, month, day, tz)]
        if moment is not None
    ]
    if not candidates:
        return None
    reference = now or datetime.now(UTC)
    return min(candidates, key=lambda m: abs(m - reference))


def _offset(match: re.Match[str]) -> timezone | None:
    if match["z"] is None or match["z"].upper() == "Z":
        return UTC
    minutes = int(match["oh"]) * 60 + int(match["om"] or 0)
    if minutes >= 24 * 60:
        return None
    return timezone((-1 if match["sign"] == "-" else 1) * timedelta(minutes=minutes))


def _date_readings(match: re.Match[str]) -> list[tuple[int, int, int]]:
    a, b, c = int(match["a"]), int(match["b"]), int(match["c"])
    if len(match["a"]) == 4:  # year first: 2025/5/16, 2025-05-16
        return [(a, b, c)]
    year = c + 2000 if len(match["c"]) <= 2 else c
    if match["sep"] == ".":  # day first: 16.05.2025 (de, ru, ...)
        return [(year, b, a)]
    # 5/16/2025 (en-US, invariant) or 16/05/2025 (en-GB, fr, ...): both if both fit.
    readings = [(year, a, b)]
    if a != b:
        readings.append((year, b, a))
    return readings


def _build(match: re.Match[str], year: int, month: int, day: int,
           tz: timezone) -> datetime | None:
    hour = int(match["h"])
    ampm = (match["ampm"] or "").lower().replace(".", "")
    if ampm:
        if not 1 <= hour <= 12:
            return None
        hour = hour % 12 + (12 if ampm == "pm" else 0)
    frac = (match["frac"] or "0")[:6].ljust(6, "0")
    try:
        return datetime(year, month, day, hour, int(match["mi"]), int(match["s"] or 0),
                        int(frac), tzinfo=tz)
    except ValueError:
        return None
