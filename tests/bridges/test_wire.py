"""integration_events.bridges.wire: CAP's sent time and correlation ids."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest

from integration_events.bridges.wire import (
    correlation_uuid,
    format_sent_time,
    parse_sent_time,
)

NOW = datetime(2025, 5, 20, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # DateTimeOffset.Now.ToString() (CAP 6.x) in a few cultures.
        ("5/16/2025 3:04:05 PM +08:00", datetime(2025, 5, 16, 15, 4, 5,
                                                 tzinfo=timezone(timedelta(hours=8)))),
        ("16.05.2025 15:04:05 +02:00", datetime(2025, 5, 16, 15, 4, 5,
                                                tzinfo=timezone(timedelta(hours=2)))),
        ("05/16/2025 15:04:05 -05:30", datetime(2025, 5, 16, 15, 4, 5,
                                                tzinfo=timezone(-timedelta(hours=5.5)))),
        # DateTime.Now.ToString() (CAP 7.x/8.x): no offset, read as UTC.
        ("16.05.2025 15:04:05", datetime(2025, 5, 16, 15, 4, 5, tzinfo=UTC)),
        ("2025/5/16 15:04:35", datetime(2025, 5, 16, 15, 4, 35, tzinfo=UTC)),
        ("16/05/2025 15:04:05", datetime(2025, 5, 16, 15, 4, 5, tzinfo=UTC)),
        ("5/16/2025 12:04:05 AM", datetime(2025, 5, 16, 0, 4, 5, tzinfo=UTC)),
        # ISO 8601 (our services, or CAP configured to write it).
        ("2025-05-16T15:04:05.1234567+08:00", None),
        ("2025-05-16T07:04:05Z", datetime(2025, 5, 16, 7, 4, 5, tzinfo=UTC)),
    ],
)
def test_parse_sent_time_reads_the_shapes_dotnet_prints(text: str,
                                                        expected: datetime | None) -> None:
    parsed = parse_sent_time(text, now=NOW)
    assert parsed is not None and parsed.tzinfo is not None
    if expected is not None:
        assert parsed == expected


def test_an_ambiguous_date_takes_the_reading_closest_to_now() -> None:
    # 05/06/2025: May 6 (en-US) or 5 June (en-GB); received on 4 June, it was June.
    june = datetime(2025, 6, 4, tzinfo=UTC)
    assert parse_sent_time("05/06/2025 10:00:00", now=june) == datetime(2025, 6, 5, 10,
                                                                        tzinfo=UTC)
    may = datetime(2025, 5, 7, tzinfo=UTC)
    assert parse_sent_time("05/06/2025 10:00:00", now=may) == datetime(2025, 5, 6, 10,
                                                                       tzinfo=UTC)


@pytest.mark.parametrize("text", ["", "yesterday", "13/13/2025 10:00:00", "1/2/2025 25:00:00",
                                  "5/16/2025 13:04:05 PM", "5/16/2025 3:04:05 +99:00"])
def test_unreadable_sent_times_are_none(text: str) -> None:
    assert parse_sent_time(text, now=NOW) is None


def test_format_is_the_invariant_culture_shape_in_utc_and_reads_back() -> None:
    moment = datetime(2025, 5, 16, 15, 4, 5, 999, tzinfo=timezone(timedelta(hours=8)))
    text = format_sent_time(moment)
    assert text == "05/16/2025 07:04:05 +00:00"
    assert parse_sent_time(text) == moment.replace(microsecond=0)


def test_correlation_ids() -> None:
    ours = uuid.UUID("0196d8a4-7e1c-7b3a-9f00-1234567890ab")
    assert correlation_uuid(str(ours)) == ours  # another service of ours: kept
    snowflake = correlation_uuid("1923273228417118208")
    assert snowflake.version == 5
    assert snowflake == correlation_uuid("1923273228417118208")  # deterministic
    assert snowflake != correlation_uuid("1923273228417118209")
    # A non-canonical spelling of a UUID is hashed, so that re-emitting it is exact.
    assert correlation_uuid(str(ours).upper()) != ours
