"""What the admin's dashboard pages show: counts, lag, rates, history, subscribers, nodes.

Every query here is bounded by an index (status, created_at, finished_at, lease_until) so
that the pages stay fast with millions of rows, and what the overview polls is cached for the
poll interval (``snapshot``). Charts are laid out here (``Chart``) and drawn by the template
``integration_events/admin/_chart.html`` (escaped SVG, no script, no network).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from django.core.cache import caches
from django.db import connections
from django.db.models import Count, Min, Q, QuerySet
from django.db.models.functions import TruncHour
from django.utils import timezone

from .events import declarations
from .models import MessageStatus, PublishedMessage, ReceivedMessage, WorkerNode
from .nodes import alive_nodes
from .ordering import blocked_keys
from .registry import Subscription, all_subscriptions

logger = logging.getLogger("integration_events")

# The live-rate window: RATE_BUCKETS buckets of RATE_BUCKET_SECONDS each (5 minutes).
RATE_BUCKET_SECONDS = 10
RATE_BUCKETS = 30
HISTORY_HOURS = 24
HISTORY_CACHE = "default"
HISTORY_CACHE_SECONDS = 300
# The overview polls its JSON this often; what it shows is computed at most once per interval
# and database, however many tabs are open.
LIVE_POLL_SECONDS = 5

SERIES_COLOURS = {"published": "#0d6efd", "delivered": "#198754", "failed": "#dc3545"}


def cached(key: str, seconds: int, compute: Callable[[], Any]) -> Any:
    """``compute()``, kept in the HISTORY_CACHE cache for ``seconds``. A cache that is down
    costs the queries it would have saved, never the page."""
    cache = caches[HISTORY_CACHE]
    try:
        found = cache.get(key)
    except Exception:
        logger.warning("dashboard cache unavailable key=%s", key, exc_info=True)
        return compute()
    if found is None:
        found = compute()
        try:
            cache.set(key, found, seconds)
        except Exception:
            logger.warning("dashboard cache unavailable key=%s", key, exc_info=True)
    return found


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
        key = f"integration_events:history:{using}:{edges[0].isoformat()}:{buckets}"
        past = cached(key, HISTORY_CACHE_SECONDS, lambda: _series_counts(edges[:-1], using))
        current = _series_counts(edges[-2:], using)
        published, delivered, failed = (p + c for p, c in zip(past, current, strict=True))
    else:
        published, delivered, failed = _series_counts(edges, using)
    return Series(starts=edges[:-1], bucket_seconds=bucket_seconds, published=published,
                  delivered=delivered, failed=failed)


# --- charts -----------------------------------------------------------------------------------


def nice_ticks(peak: float, intervals: int = 5, *, whole: bool = False) -> list[float]:
    """Axis ticks from 0 to just past ``peak``, in the smallest step of 1, 2 or 5 times a
    power of ten that needs at most ``intervals`` intervals; ``whole`` keeps the step at 1 or
    more (counts, not rates)."""
    if peak <= 0:
        return [0.0, 1.0]
    magnitude = 10.0 ** math.floor(math.log10(peak / intervals))
    if whole:
        magnitude = max(magnitude, 1.0)
    steps = (f * magnitude * 10**k for k in range(3) for f in (1, 2, 5))
    step = next(s for s in steps if math.ceil(peak / s - 1e-9) <= intervals)
    return [round(i * step, 10) for i in range(math.ceil(peak / step - 1e-9) + 1)]


def _fmt(value: float) -> str:
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.10g}"


@dataclass
class ChartSeries:
    name: str
    colour: str
    points: str
    dots: list[tuple[str, str, str]]  # (x, y, tooltip)


@dataclass
class Chart:
    """A line chart laid out for the template integration_events/admin/_chart.html: every
    coordinate is computed here, every text is escaped there, colours other than the series'
    come from the admin's CSS variables (light and dark themes)."""

    title: str
    width: int
    height: int
    left: int
    top: int
    plot_width: int
    plot_height: int
    y_ticks: list[tuple[str, str, str]] = field(default_factory=list)  # (line y, text y, label)
    x_labels: list[tuple[str, str]] = field(default_factory=list)  # (x, label)
    series: list[ChartSeries] = field(default_factory=list)
    legend: list[tuple[int, int, str, str]] = field(default_factory=list)  # box x, text x

    @property
    def right(self) -> int:
        return self.left + self.plot_width

    @property
    def tick_x(self) -> int:
        return self.left - 4

    @property
    def label_y(self) -> int:
        return self.height - 8


def line_chart(data: dict[str, list[float]], labels: list[str], *, title: str, unit: str = "",
               whole: bool = False, width: int = 720, height: int = 200) -> Chart:
    """Lay out one polyline per series over ``labels``, with round axis ticks and a legend."""
    chart = Chart(title=title, width=width, height=height, left=48, top=24,
                  plot_width=width - 60, plot_height=height - 52)
    points = max((len(v) for v in data.values()), default=0)
    ticks = nice_ticks(max((max(v) for v in data.values() if v), default=0.0), whole=whole)
    scale = ticks[-1]

    def y_of(value: float) -> float:
        return chart.top + chart.plot_height - chart.plot_height * value / scale

    chart.y_ticks = [(f"{y_of(t):.1f}", f"{y_of(t) + 4:.1f}", _fmt(t)) for t in ticks]
    step = chart.plot_width / max(points - 1, 1)
    every = max(1, points // 8)
    chart.x_labels = [(f"{chart.left + step * i:.1f}", label)
                      for i, label in enumerate(labels[:points]) if i % every == 0]
    for n, (name, values) in enumerate(data.items()):
        colour = SERIES_COLOURS.get(name, "#6c757d")
        xy = [(chart.left + step * i, y_of(v)) for i, v in enumerate(values)]
        chart.series.append(ChartSeries(
            name=name, colour=colour,
            points=" ".join(f"{x:.1f},{y:.1f}" for x, y in xy),
            dots=[(f"{x:.1f}", f"{y:.1f}",
                   f"{name} {labels[i] if i < len(labels) else ''}: {_fmt(values[i])}{unit}")
                  for i, (x, y) in enumerate(xy) if values[i]],
        ))
        box = chart.left + 8 + n * 110
        chart.legend.append((box, box + 14, name, colour))
    return chart


# --- overview ---------------------------------------------------------------------------------


def live_rates(now: datetime | None = None, using: str = "default") -> dict[str, Any]:
    """The counts, lags and per-second rates over the last minutes (what the overview
    polls)."""
    now = now or timezone.now()
    s = series(now, RATE_BUCKET_SECONDS, RATE_BUCKETS, using)
    counts = message_counts(using)
    window = RATE_BUCKET_SECONDS * RATE_BUCKETS
    return {
        "now": now.isoformat(),
        "window_seconds": window,
        "bucket_seconds": RATE_BUCKET_SECONDS,
        "labels": [timezone.localtime(t).strftime("%H:%M:%S") for t in s.starts],
        "rates": s.as_rates(),
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
        # Ordering keys held back by a dead letter (bounded: see ordering.blocked_keys).
        "blocked_keys": _blocked_keys_text(using),
    }


def _blocked_keys_text(using: str) -> str:
    count, capped = blocked_keys(using)
    return f"{count}+" if capped else str(count)


def rate_chart(live: dict[str, Any]) -> Chart:
    return line_chart(live["rates"], live["labels"], unit="/s",
                      title="Messages per second, last 5 minutes")


def history(now: datetime | None = None, using: str = "default") -> dict[str, Any]:
    """Hourly counts over the last 24 hours."""
    now = now or timezone.now()
    s = series(now, 3600, HISTORY_HOURS, using)
    rows = [
        {"start": t, "published": p, "delivered": d, "failed": f}
        for t, p, d, f in zip(s.starts, s.published, s.delivered, s.failed, strict=True)
    ]
    return {
        "labels": [timezone.localtime(t).strftime("%H:00") for t in s.starts],
        "rows": rows,
        "totals": {name: sum(getattr(s, name)) for name in ("published", "delivered", "failed")},
    }


def history_chart(hist: dict[str, Any]) -> Chart:
    data = {name: [float(row[name]) for row in hist["rows"]]
            for name in ("published", "delivered", "failed")}
    return line_chart(data, hist["labels"], whole=True,
                      title="Messages per hour, last 24 hours")


def snapshot(using: str = "default") -> dict[str, Any]:
    """Live rates, the 24-hour history and the number of alive nodes, computed at most once
    per LIVE_POLL_SECONDS (and database) and shared by every tab that polls."""

    def compute() -> dict[str, Any]:
        now = timezone.now()
        return {"live": live_rates(now, using), "history": history(now, using),
                "alive_nodes": alive_nodes(using).count()}

    found: dict[str, Any] = cached(f"integration_events:live:{using}", LIVE_POLL_SECONDS,
                                   compute)
    return found


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
    """A heartbeat row, whether it is alive by the one rule (integration_events.nodes), and
    the claims its workers hold now."""

    node: WorkerNode
    alive: bool
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


def nodes(using: str = "default") -> tuple[list[NodeInfo], list[Claim]]:
    """Each heartbeat row with the claims its workers hold now, and the claims of workers
    that belong to no known node.

    A node is named ``host:pid`` of its cluster process, while a claim names the worker
    process (``host:pid`` of a child); a claim belongs to a node when the names match (also
    as ``node-name/worker-pid``) or, failing that, when it is the only live node on the
    claim's host. Alive is decided in database time, by ``nodes.alive_nodes()``."""
    claims = current_claims(using)
    rows = list(WorkerNode.objects.using(using).order_by("hostname", "name"))
    alive = set(alive_nodes(using).values_list("pk", flat=True))
    infos = [NodeInfo(n, alive=n.pk in alive, claims=[]) for n in rows]
    by_name = {i.node.name: i for i in infos}
    by_host: dict[str, list[NodeInfo]] = {}
    for info in infos:
        if info.alive:
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
