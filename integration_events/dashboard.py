"""What the admin's dashboard pages show: counts, lag, rates, history, subscribers, nodes.

Every query here is bounded by an index (status, created_at, finished_at, lease_until) so
that the pages stay fast with millions of rows; charts are rendered here as SVG strings
(escaped, no script, no network) so the pages need nothing from outside.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from django.core.cache import caches
from django.db import connections
from django.db.models import Count, Min, Q, QuerySet
from django.db.models.functions import TruncHour
from django.utils import timezone
from django.utils.html import escape

from .events import declarations
from .models import MessageStatus, PublishedMessage, ReceivedMessage, WorkerNode
from .registry import Subscription, all_subscriptions

# The live-rate window: RATE_BUCKETS buckets of RATE_BUCKET_SECONDS each (5 minutes).
RATE_BUCKET_SECONDS = 10
RATE_BUCKETS = 30
HISTORY_HOURS = 24
HISTORY_CACHE = "default"
HISTORY_CACHE_SECONDS = 300
# A node whose heartbeat is older than this is shown as stale (the sweep beats every minute).
STALE_AFTER = timedelta(minutes=3)

SERIES_COLOURS = {"published": "#0d6efd", "delivered": "#198754", "failed": "#dc3545"}


# --- counts and lag ---------------------------------------------------------------------------

# Counts up to this are exact; past it they come from the planner's statistics (PostgreSQL)
# or are reported as "more than" (other databases), so a page never counts millions of rows.
EXACT_COUNT_LIMIT = 10_000


def planner_estimate(qs: QuerySet[Any]) -> int | None:
    """PostgreSQL's estimate of the rows ``qs`` returns (EXPLAIN, from table statistics);
    None on other databases."""
    connection = connections[qs.db]
    if connection.vendor != "postgresql":
        return None
    sql, params = qs.order_by().values("pk").query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN (FORMAT JSON) {sql}", params)
        row = cursor.fetchone()
    plan = row[0] if row else None
    if isinstance(plan, str):
        plan = json.loads(plan)
    if not plan:
        return None
    return int(plan[0]["Plan"]["Plan Rows"])


def bounded_count(qs: QuerySet[Any], limit: int | None = None) -> tuple[int, bool]:
    """(count, estimated): exact up to ``limit`` (a COUNT over a LIMITed subquery reads at
    most that many index entries), past it the planner's estimate (never below the limit)."""
    limit = EXACT_COUNT_LIMIT if limit is None else limit
    capped = qs.order_by()[: limit + 1].count()
    if capped <= limit:
        return capped, False
    return max(planner_estimate(qs) or 0, capped), True


@dataclass
class Counts:
    """Messages by status (published) and by group and status (received); ``estimated``
    holds the keys ("published:succeeded", "received:group:succeeded") that are estimates."""

    published: dict[str, int]
    received: dict[str, dict[str, int]]
    estimated: set[str] = field(default_factory=set)


def message_counts(using: str = "default") -> Counts:
    """One bounded count per status (and per group and status), each an index range scan.

    The groups are those in the subscriber registry plus any that still have unfinished or
    failed rows (a group whose subscriber was removed); SELECT DISTINCT over the whole inbox
    would read every row."""
    counts = Counts(published={}, received={})
    pub = PublishedMessage.objects.using(using)
    recv = ReceivedMessage.objects.using(using)
    for status in MessageStatus:
        n, estimated = bounded_count(pub.filter(status=status))
        counts.published[status.value] = n
        if estimated:
            counts.estimated.add(f"published:{status.value}")
    groups = {s.group for s in all_subscriptions()}
    groups.update(
        recv.filter(status__in=[s for s in MessageStatus if s != MessageStatus.SUCCEEDED])
        .order_by()
        .values_list("group", flat=True).distinct()
    )
    for group in sorted(groups):
        per_status: dict[str, int] = {}
        for status in MessageStatus:
            n, estimated = bounded_count(recv.filter(group=group, status=status))
            per_status[status.value] = n
            if estimated:
                counts.estimated.add(f"received:{group}:{status.value}")
        if any(per_status.values()) or group in {s.group for s in all_subscriptions()}:
            counts.received[group] = per_status
    return counts


def oldest_due(model: type[PublishedMessage] | type[ReceivedMessage], now: datetime,
               using: str = "default") -> float | None:
    """Seconds the oldest due (pending or retrying, next attempt passed) message has waited:
    the lag. None when nothing is waiting. Uses the (status, next_attempt_at) index."""
    oldest = (
        model.objects.using(using)
        .filter(status__in=(MessageStatus.PENDING, MessageStatus.RETRYING),
                next_attempt_at__lte=now)
        .aggregate(oldest=Min("next_attempt_at"))["oldest"]
    )
    if oldest is None:
        return None
    return max(0.0, (now - oldest).total_seconds())


# --- bucketed series --------------------------------------------------------------------------


def _bucket_counts(qs: QuerySet[Any], field_name: str, edges: list[datetime]) -> list[int]:
    """Rows of ``qs`` per bucket [edges[i], edges[i+1]) of ``field_name``, in one query that
    reads only the index range between the first and the last edge."""
    qs = qs.order_by().filter(**{f"{field_name}__gte": edges[0], f"{field_name}__lt": edges[-1]})
    if edges[1] - edges[0] == timedelta(hours=1) and edges[0].minute == 0:
        # Hourly: GROUP BY the truncated hour, one comparison per row instead of 24.
        hours = qs.annotate(hour=TruncHour(field_name, tzinfo=UTC)).values("hour")
        rows = hours.annotate(n=Count("pk"))
        by_hour = {row["hour"]: row["n"] for row in rows}
        return [int(by_hour.get(edge, 0)) for edge in edges[:-1]]
    aggregates = {
        f"b{i}": Count("pk", filter=Q(**{f"{field_name}__gte": lo, f"{field_name}__lt": hi}))
        for i, (lo, hi) in enumerate(zip(edges, edges[1:], strict=False))
    }
    values = qs.aggregate(**aggregates)
    return [int(values[f"b{i}"] or 0) for i in range(len(edges) - 1)]


@dataclass
class Series:
    """Three aligned series over the same buckets."""

    starts: list[datetime]
    bucket_seconds: int
    published: list[int]
    delivered: list[int]
    failed: list[int]

    def as_rates(self) -> dict[str, list[float]]:
        return {
            name: [round(v / self.bucket_seconds, 3) for v in getattr(self, name)]
            for name in ("published", "delivered", "failed")
        }


def _series_counts(edges: list[datetime], using: str) -> tuple[list[int], list[int], list[int]]:
    pub = PublishedMessage.objects.using(using)
    recv = ReceivedMessage.objects.using(using)
    published = _bucket_counts(pub.all(), "created_at", edges)
    delivered = _bucket_counts(recv.filter(status=MessageStatus.SUCCEEDED), "finished_at", edges)
    failed_recv = _bucket_counts(recv.filter(status=MessageStatus.FAILED), "finished_at", edges)
    failed_pub = _bucket_counts(pub.filter(status=MessageStatus.FAILED), "finished_at", edges)
    failed = [a + b for a, b in zip(failed_recv, failed_pub, strict=True)]
    return published, delivered, failed


def series(now: datetime, bucket_seconds: int, buckets: int, using: str = "default") -> Series:
    """Published (by created_at), delivered (received rows succeeded, by finished_at) and
    failed (published or received rows that gave up, by finished_at) per bucket, ending at
    ``now``.

    Hourly series keep the hours already over in the cache for HISTORY_CACHE_SECONDS (their
    counts no longer change, and a busy day is hundreds of thousands of rows to count); the
    current hour is always counted afresh."""
    now = now.astimezone(UTC)
    if bucket_seconds >= 3600:
        end = now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    else:
        epoch = int(now.timestamp()) // bucket_seconds * bucket_seconds + bucket_seconds
        end = datetime.fromtimestamp(epoch, tz=UTC)
    edges = [end - timedelta(seconds=bucket_seconds * (buckets - i)) for i in range(buckets + 1)]
    if bucket_seconds == 3600 and buckets > 1:
        cache = caches[HISTORY_CACHE]
        key = f"integration_events:history:{using}:{edges[0].isoformat()}:{buckets}"
        past = cache.get(key)
        if past is None:
            past = _series_counts(edges[:-1], using)
            cache.set(key, past, HISTORY_CACHE_SECONDS)
        current = _series_counts(edges[-2:], using)
        published, delivered, failed = (p + c for p, c in zip(past, current, strict=True))
    else:
        published, delivered, failed = _series_counts(edges, using)
    return Series(starts=edges[:-1], bucket_seconds=bucket_seconds, published=published,
                  delivered=delivered, failed=failed)


# --- SVG --------------------------------------------------------------------------------------


def svg_chart(
    data: dict[str, list[float]],
    labels: list[str],
    *,
    title: str,
    unit: str = "",
    width: int = 720,
    height: int = 200,
) -> str:
    """A line chart with one polyline per series, axes, a legend and tooltips, as SVG markup.

    Every text is escaped; the result holds no script and no external reference."""
    left, right, top, bottom = 48, 12, 24, 28
    plot_w, plot_h = width - left - right, height - top - bottom
    points = max((len(v) for v in data.values()), default=0)
    peak = max((max(v) for v in data.values() if v), default=0.0)
    scale_max = _nice_ceiling(peak)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="ie-chart" role="img" '
        f'viewBox="0 0 {width} {height}" width="100%" preserveAspectRatio="xMidYMid meet" '
        f'aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="#fafafa" '
        'stroke="#ddd"/>',
    ]
    for i in range(5):
        value = scale_max * i / 4
        y = top + plot_h - plot_h * i / 4
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" '
                     'stroke="#e5e5e5"/>')
        parts.append(f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end" font-size="10" '
                     f'fill="#666">{escape(_fmt(value))}</text>')
    step = plot_w / max(points - 1, 1)
    label_every = max(1, points // 8)
    for i, label in enumerate(labels[:points]):
        if i % label_every == 0:
            x = left + step * i
            parts.append(f'<text x="{x:.1f}" y="{height - 8}" text-anchor="middle" '
                         f'font-size="10" fill="#666">{escape(label)}</text>')
    for legend_i, (name, values) in enumerate(data.items()):
        colour = SERIES_COLOURS.get(name, "#333")
        coords = " ".join(
            f"{left + step * i:.1f},{top + plot_h - (plot_h * v / scale_max):.1f}"
            for i, v in enumerate(values)
        )
        parts.append(f'<polyline class="ie-series ie-series-{escape(name)}" fill="none" '
                     f'stroke="{colour}" stroke-width="2" points="{coords}"/>')
        for i, v in enumerate(values):
            if v:
                x, y = left + step * i, top + plot_h - (plot_h * v / scale_max)
                tip = f"{name} {labels[i] if i < len(labels) else ''}: {_fmt(v)}{unit}"
                parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{colour}">'
                             f"<title>{escape(tip)}</title></circle>")
        lx = left + 8 + legend_i * 110
        parts.append(f'<rect x="{lx}" y="6" width="10" height="10" fill="{colour}"/>')
        parts.append(f'<text x="{lx + 14}" y="15" font-size="11" fill="#333">'
                     f"{escape(name)}</text>")
    parts.append("</svg>")
    return "".join(parts)


def _nice_ceiling(value: float) -> float:
    if value <= 0:
        return 1.0
    magnitude = 10 ** (len(str(int(value))) - 1) if value >= 1 else 0.1
    for factor in (1, 2, 2.5, 5, 10):
        if value <= factor * magnitude:
            return factor * magnitude
    return 10 * magnitude


def _fmt(value: float) -> str:
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.2f}".rstrip("0")


# --- overview ---------------------------------------------------------------------------------


def live_rates(now: datetime | None = None, using: str = "default") -> dict[str, Any]:
    """The JSON the overview polls: per-second rates over the last minutes, the current
    counts and lags, and the rate chart already rendered."""
    now = now or timezone.now()
    s = series(now, RATE_BUCKET_SECONDS, RATE_BUCKETS, using)
    rates = s.as_rates()
    counts = message_counts(using)
    labels = [timezone.localtime(t).strftime("%H:%M:%S") for t in s.starts]
    window = RATE_BUCKET_SECONDS * RATE_BUCKETS
    return {
        "now": now.isoformat(),
        "window_seconds": window,
        "bucket_seconds": RATE_BUCKET_SECONDS,
        "labels": labels,
        "rates": rates,
        "per_second": {
            name: round(sum(getattr(s, name)) / window, 3)
            for name in ("published", "delivered", "failed")
        },
        "published": counts.published,
        "received": counts.received,
        "estimated": sorted(counts.estimated),
        "lag": {
            "published": oldest_due(PublishedMessage, now, using),
            "received": oldest_due(ReceivedMessage, now, using),
        },
        "chart": svg_chart(rates, labels, title="Messages per second, last 5 minutes",
                           unit="/s"),
    }


def history(now: datetime | None = None, using: str = "default") -> dict[str, Any]:
    """Hourly counts over the last 24 hours, and their chart."""
    now = now or timezone.now()
    s = series(now, 3600, HISTORY_HOURS, using)
    labels = [timezone.localtime(t).strftime("%H:00") for t in s.starts]
    data: dict[str, list[float]] = {
        "published": [float(v) for v in s.published],
        "delivered": [float(v) for v in s.delivered],
        "failed": [float(v) for v in s.failed],
    }
    rows = [
        {"start": t, "published": p, "delivered": d, "failed": f}
        for t, p, d, f in zip(s.starts, s.published, s.delivered, s.failed, strict=True)
    ]
    return {
        "labels": labels,
        "rows": rows,
        "totals": {name: sum(getattr(s, name)) for name in ("published", "delivered", "failed")},
        "chart": svg_chart(data, labels, title="Messages per hour, last 24 hours"),
    }


def format_age(seconds: float | None) -> str:
    """"3 s", "4 min 10 s", "2 h 5 min", or "none"."""
    if seconds is None:
        return "none"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    if seconds < 86400:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    return f"{seconds // 86400} d {seconds % 86400 // 3600} h"


# --- subscribers ------------------------------------------------------------------------------


@dataclass
class TopicInfo:
    topic: str
    event_classes: list[str] = field(default_factory=list)
    schema: str = ""
    subscriptions: list[Subscription] = field(default_factory=list)

    @property
    def declared(self) -> bool:
        return bool(self.event_classes)

    @property
    def orphaned(self) -> bool:
        """Declared, but no group subscribes: its messages go nowhere."""
        return self.declared and not self.subscriptions

    @property
    def undeclared(self) -> bool:
        """Subscribed, but no event class declares the topic."""
        return not self.declared and bool(self.subscriptions)


def subscriber_topics() -> list[TopicInfo]:
    """Every topic declared or subscribed to, sorted, with its classes and subscriptions."""
    topics: dict[str, TopicInfo] = {}
    for topic, decls in declarations().items():
        info = topics.setdefault(topic, TopicInfo(topic))
        info.event_classes = [d.dotted_path for d in decls]
        if decls:
            try:
                schema = decls[0].event_class.model_json_schema()
                info.schema = json.dumps(schema, indent=2, sort_keys=True)
            except Exception as exc:  # a schema pydantic cannot build must not break the page
                info.schema = f"(no schema: {type(exc).__name__}: {exc})"
    for sub in all_subscriptions():
        topics.setdefault(sub.topic, TopicInfo(sub.topic)).subscriptions.append(sub)
    for info in topics.values():
        info.subscriptions.sort(key=lambda s: s.group)
    return [topics[t] for t in sorted(topics)]


# --- nodes ------------------------------------------------------------------------------------


@dataclass
class Claim:
    """The messages one worker process (claimed_by) holds in processing now."""

    worker: str
    published: int = 0
    received: int = 0
    lease_until: datetime | None = None

    @property
    def hostname(self) -> str:
        return self.worker.rsplit(":", 1)[0]


@dataclass
class NodeInfo:
    node: WorkerNode
    stale: bool
    claims: list[Claim]

    @property
    def held(self) -> int:
        return sum(c.published + c.received for c in self.claims)


def current_claims(using: str = "default") -> list[Claim]:
    """Processing rows grouped by the worker that claimed them (the lease index keeps this
    to the rows in processing)."""
    claims: dict[str, Claim] = {}
    for model, attr in ((PublishedMessage, "published"), (ReceivedMessage, "received")):
        rows = (
            model.objects.using(using).filter(status=MessageStatus.PROCESSING).order_by()
            .values("claimed_by").annotate(n=Count("pk"), until=Min("lease_until"))
        )
        for row in rows:
            claim = claims.setdefault(row["claimed_by"], Claim(row["claimed_by"]))
            setattr(claim, attr, row["n"])
            if row["until"] is not None and (
                claim.lease_until is None or row["until"] < claim.lease_until
            ):
                claim.lease_until = row["until"]
    return sorted(claims.values(), key=lambda c: c.worker)


def nodes(now: datetime | None = None, using: str = "default") -> tuple[list[NodeInfo],
                                                                        list[Claim]]:
    """Each heartbeat row with the claims its workers hold now, and the claims of workers
    that belong to no known node.

    A node is named ``host:pid`` of its cluster process, while a claim names the worker
    process (``host:pid`` of a child); a claim belongs to a node when the names match (also
    as ``node-name/worker-pid``) or, failing that, when it is the only live node on the
    claim's host."""
    now = now or timezone.now()
    claims = current_claims(using)
    rows = list(WorkerNode.objects.using(using).order_by("hostname", "name"))
    infos = [NodeInfo(n, stale=now - n.last_seen_at > STALE_AFTER, claims=[]) for n in rows]
    by_name = {i.node.name: i for i in infos}
    by_host: dict[str, list[NodeInfo]] = {}
    for info in infos:
        if not info.stale:
            by_host.setdefault(info.node.hostname, []).append(info)
    unassigned: list[Claim] = []
    for claim in claims:
        # "node/worker-pid" names a node exactly; a bare "host:pid" is matched by host.
        target = by_name.get(claim.worker) or by_name.get(claim.worker.split("/", 1)[0])
        if target is None and len(by_host.get(claim.hostname, [])) == 1:
            target = by_host[claim.hostname][0]
        if target is None:
            unassigned.append(claim)
        else:
            target.claims.append(claim)
    return infos, unassigned
