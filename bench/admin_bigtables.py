"""Time the admin dashboard on big tables (PostgreSQL).

Fills the outbox with ``--rows`` published messages and the inbox with two received messages
per published one (generate_series, one INSERT ... SELECT each, then VACUUM ANALYZE), and
times every list page, filter, search and dashboard page with Django's test client.

    IE_DB_NAME=ie_bench .venv/bin/python bench/admin_bigtables.py              # quick: 50,000
    .venv/bin/python bench/admin_bigtables.py --rows 1000000                   # the documented run
    .venv/bin/python bench/admin_bigtables.py --rows 1000000 --keep            # reuse the data

A benchmark, not a test: it prints a table and exits 1 if a page took a second or more.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Spread over a week: with the default expiries that is what a busy outbox holds.
SPAN_DAYS = 7
GROUPS = ("probe-a", "probe-b")
SCAN_MARK = "(scan) "
MAIN_TOPIC = "probe.probe-happened"
TOPICS = (MAIN_TOPIC, MAIN_TOPIC, MAIN_TOPIC, "probe.chain-linked", "probe.lonely-happened",
          "bench.rare-topic")


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=50_000,
                        help="published messages (received: twice as many); default 50,000")
    parser.add_argument("--db-name", default=os.environ.get("IE_DB_NAME", "ie_bench"),
                        help="PostgreSQL database (created if missing); default ie_bench")
    parser.add_argument("--keep", action="store_true",
                        help="reuse the rows already there if the count matches")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per page (median)")
    return parser.parse_args()


def setup(db_name: str) -> None:
    os.environ["IE_DB"] = "postgres"
    os.environ["IE_DB_NAME"] = db_name
    os.environ.setdefault("DJANGO_DEBUG", "0")
    # The test settings: the probe app's topics and groups are the registry the pages show.
    os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"
    import psycopg

    with psycopg.connect(host=os.environ.get("IE_DB_HOST", "127.0.0.1"),
                         user=os.environ.get("IE_DB_USER", "postgres"),
                         dbname="postgres", autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                              [db_name]).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{db_name}"')
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)


def fill(rows: int, keep: bool) -> float:
    from django.db import connection

    from integration_events.models import PublishedMessage

    if keep and PublishedMessage.objects.order_by()[: rows + 1].count() == rows:
        print(f"reusing {rows:,} published rows")
        return 0.0
    topics_sql = "ARRAY[" + ",".join(f"'{t}'" for t in TOPICS) + "]"
    started = time.monotonic()
    with connection.cursor() as c:
        c.execute("TRUNCATE integration_events_receivedmessage, "
                  "integration_events_publishedmessage")
        # Ids are uuid7-shaped (48 bits of the creation time in ms first), like the real ones.
        # Statuses: 0.1 % failed, 0.2 % retrying, 0.3 % pending, one per 2,000 processing,
        # the rest succeeded.
        c.execute(f"""
            INSERT INTO integration_events_publishedmessage
                (id, topic, content, headers, status, attempts, next_attempt_at, created_at,
                 finished_at, expires_at, claimed_by, last_error, correlation_id,
                 correlation_sequence, lease_until)
            SELECT id, topic, content, '{{"sent-at": "bench"}}'::jsonb, status,
                   CASE WHEN status = 'failed' THEN 5 ELSE 1 END,
                   ts, ts,
                   CASE WHEN status IN ('succeeded', 'failed') THEN ts + interval '1 second' END,
                   CASE WHEN status IN ('succeeded', 'failed') THEN ts + interval '8 days' END,
                   CASE WHEN status = 'processing' THEN 'bench-host:4242' ELSE '' END,
                   CASE WHEN status = 'failed' THEN 'UnknownTopic: bench' ELSE '' END,
                   id, 0,
                   CASE WHEN status = 'processing' THEN now() + interval '30 seconds' END
            FROM (
                SELECT g,
                       ts,
                       (lpad(to_hex((extract(epoch FROM ts) * 1000)::bigint), 12, '0') || '7'
                        || substr(md5(g::text), 1, 3) || '8' || substr(md5(g::text), 4, 15)
                       )::uuid AS id,
                       ({topics_sql})[1 + g % {len(TOPICS)}] AS topic,
                       '{{"n": ' || g || ', "behaviour": "ok", "text": "item ' || g || '"}}'
                           AS content,
                       CASE WHEN g % 1000 = 7 THEN 'failed'
                            WHEN g % 1000 IN (8, 9) THEN 'retrying'
                            WHEN g % 1000 IN (10, 11, 12) THEN 'pending'
                            WHEN g % 2000 = 13 THEN 'processing'
                            ELSE 'succeeded' END AS status
                FROM (
                    SELECT g, now() - (({rows} - g) * (interval '{SPAN_DAYS} days' / {rows}))
                              AS ts
                    FROM generate_series(1, {rows}) AS g
                ) AS s
            ) AS m
        """)
        c.execute(f"""
            INSERT INTO integration_events_receivedmessage
                (message_id, "group", topic, handler, status, attempts, next_attempt_at,
                 created_at, finished_at, expires_at, claimed_by, last_error, lease_until)
            SELECT p.id, grp, p.topic, 'tests.eventapp.subscribers.probe_' || right(grp, 1),
                   CASE WHEN p.status = 'succeeded' AND random() < 0.002 THEN 'failed'
                        WHEN p.status = 'failed' THEN 'pending'
                        ELSE p.status END AS st,
                   1, p.created_at + interval '1 second', p.created_at + interval '1 second',
                   p.finished_at + interval '1 second', p.expires_at, p.claimed_by,
                   '', p.lease_until
            FROM integration_events_publishedmessage p
            CROSS JOIN unnest(ARRAY['{GROUPS[0]}', '{GROUPS[1]}']) AS grp
        """)
        c.execute("UPDATE integration_events_receivedmessage SET last_error = "
                  "'RuntimeError: bench' || chr(10) || chr(10) || 'Traceback ...', attempts = 5 "
                  "WHERE status = 'failed'")
    connection.close()
    with connection.cursor() as c:
        c.execute("VACUUM ANALYZE integration_events_publishedmessage")
        c.execute("VACUUM ANALYZE integration_events_receivedmessage")
    return time.monotonic() - started


def pages() -> list[tuple[str, str]]:
    from django.urls import reverse
    from django.utils import timezone

    from integration_events.models import PublishedMessage, ReceivedMessage

    pub = reverse("admin:integration_events_publishedmessage_changelist")
    recv = reverse("admin:integration_events_receivedmessage_changelist")
    middle = PublishedMessage.objects.filter(status="failed").order_by("created_at")
    target = middle[middle.count() // 2] if middle.exists() else PublishedMessage.objects.first()
    assert target is not None
    receipt = ReceivedMessage.objects.filter(message=target).first()
    # The links DateFieldListFilter's "Today" makes: local midnight to midnight, aware.
    today = timezone.localtime().replace(hour=0, minute=0, second=0, microsecond=0)
    tomorrow = today + timezone.timedelta(days=1)
    day = urlencode({"created_at__gte": str(today), "created_at__lt": str(tomorrow)})
    page = [
        ("overview", reverse("admin:integration_events_overview")),
        ("overview live JSON", reverse("admin:integration_events_live")),
        ("subscribers", reverse("admin:integration_events_subscribers")),
        ("nodes", reverse("admin:integration_events_nodes")),
        ("published: list", pub),
        ("published: page 20", pub + "?p=20"),
        ("published: status=failed", pub + "?status__exact=failed"),
        ("published: status=succeeded", pub + "?status__exact=succeeded"),
        ("published: status=pending", pub + "?status__exact=pending"),
        ("published: topic (common)", pub + f"?topic={MAIN_TOPIC}"),
        ("published: topic (rare)", pub + "?topic=bench.rare-topic"),
        ("published: created today", pub + f"?{day}"),
        ("published: failed + topic + today",
         pub + f"?status__exact=failed&topic={MAIN_TOPIC}&{day}"),
        ("published: search by id", pub + f"?q={target.pk}"),
        ("published: search topic text", pub + "?q=chain"),
        ("published: detail", reverse("admin:integration_events_publishedmessage_change",
                                      args=[target.pk])),
        ("received: list", recv),
        ("received: status=failed", recv + "?status__exact=failed"),
        ("received: group=probe-a", recv + f"?group={GROUPS[0]}"),
        ("received: group + status=failed", recv + f"?group={GROUPS[0]}&status__exact=failed"),
        ("received: topic (rare)", recv + "?topic=bench.rare-topic"),
        ("received: created today", recv + f"?{day}"),
        ("received: search by message id", recv + f"?q={target.pk}"),
    ]
    # Not held to the second: a payload search is a full scan, run only when asked for.
    page.append((f"{SCAN_MARK}published: content:item 4242", pub + "?q=content:item+4242"))
    if receipt is not None:
        page.append(("received: detail", reverse(
            "admin:integration_events_receivedmessage_change", args=[receipt.pk])))
    return page


def time_pages(repeat: int) -> list[tuple[str, float, float, int]]:
    from django.contrib.auth.models import User
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    user, _ = User.objects.get_or_create(username="bench", defaults={
        "is_staff": True, "is_superuser": True})
    client = Client()
    client.force_login(user)
    results = []
    for name, url in pages():
        timings = []
        queries = 0
        for i in range(repeat + 1):
            with CaptureQueriesContext(connection) as captured:
                started = time.perf_counter()
                response = client.get(url)
                elapsed = time.perf_counter() - started
            if response.status_code != 200:
                raise SystemExit(f"{name}: {url} answered {response.status_code}")
            if i == 0:
                first = elapsed  # the first run (cold caches for this page's plan and data)
                queries = len(captured.captured_queries)
            else:
                timings.append(elapsed)
        results.append((name, first, statistics.median(timings), queries))
    return results


def main() -> int:
    args = parse()
    setup(args.db_name)
    from integration_events.models import PublishedMessage, ReceivedMessage

    seconds = fill(args.rows, args.keep)
    if seconds:
        print(f"filled in {seconds:.1f} s")
    published = PublishedMessage.objects.order_by()[: args.rows + 1].count()
    received = ReceivedMessage.objects.order_by()[: 2 * args.rows + 1].count()
    print(f"published rows: {published:,}  received rows: {received:,}  "
          f"database: {args.db_name}\n")
    results = time_pages(args.repeat)
    width = max(len(r[0]) for r in results)
    print(f"| {'page':<{width}} | first (ms) | median of {args.repeat} (ms) | queries |")
    print(f"|{'-' * (width + 2)}|-----------:|" + "-" * (len(str(args.repeat)) + 18)
          + ":|--------:|")
    slow = []
    for name, first, median, queries in results:
        print(f"| {name:<{width}} | {first * 1000:10.0f} | "
              f"{median * 1000:{len(str(args.repeat)) + 17}.0f} | {queries:7d} |")
        if max(first, median) >= 1.0 and not name.startswith(SCAN_MARK):
            slow.append(name)
    if slow:
        print(f"\nslower than a second: {', '.join(slow)}")
        return 1
    print("\nevery page answered in under a second (rows marked (scan) are not held to it)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
