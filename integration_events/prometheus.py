"""Metrics for Prometheus (the ``[prometheus]`` extra), read from the database at scrape time.

What is bounded is a gauge read live: messages waiting, running and failed per group (and in
the outbox), how long the oldest due one has waited, nodes alive. What only grows comes from
the delivery counters the minute sweep advances (:mod:`integration_events.counters`), never
from a COUNT over the succeeded rows. Six small queries, each an index range (status with
next_attempt_at, or the heartbeat table), whatever the size of the history; the exposition is
cached per process for ``CACHE_SECONDS``, so several scrapers cost one read.

The view is in :mod:`integration_events.views`; this module only builds the text.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db.models import Count, DurationField, ExpressionWrapper, F, Max, Q
from django.db.models.functions import Now

from .conf import get_settings
from .counters import counted_through, totals
from .models import ACTIVE_STATUSES, MessageStatus, PublishedMessage, ReceivedMessage
from .nodes import alive_nodes
from .registry import all_subscriptions

try:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    from prometheus_client.exposition import CONTENT_TYPE_LATEST
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImproperlyConfigured(
        "the Prometheus view needs prometheus-client: pip install "
        "'django-integration-events[prometheus]'"
    ) from exc

__all__ = ["CONTENT_TYPE_LATEST", "exposition"]

CACHE_SECONDS = 5.0
PREFIX = "integration_events"
# Statuses reported as gauges: the ones whose rows are bounded (succeeded is a counter).
GAUGED = (MessageStatus.PENDING, MessageStatus.RETRYING, MessageStatus.PROCESSING,
          MessageStatus.FAILED)


def _waiting(model: Any, using: str, by_group: bool) -> list[tuple[Any, ...]]:
    """(group, status, count, oldest due wait) per group and gauged status: one GROUP BY over
    the rows of those statuses (the (status, next_attempt_at) index)."""
    waited = ExpressionWrapper(Now() - F("next_attempt_at"), output_field=DurationField())
    due = Q(status__in=ACTIVE_STATUSES, next_attempt_at__lte=Now())
    keys = ("group", "status") if by_group else ("status",)
    rows = (model.objects.using(using).filter(status__in=GAUGED).order_by().values_list(*keys)
            .annotate(n=Count("pk"), oldest=Max(waited, filter=due)))
    return [row if by_group else ("", *row) for row in rows]


class DatabaseCollector:
    """A prometheus-client collector reading one database alias at collect time."""

    def __init__(self, using: str) -> None:
        self.using = using

    def collect(self) -> Iterator[Any]:
        using = self.using
        labels = ["database", "group", "status"]
        inbox = GaugeMetricFamily(
            f"{PREFIX}_inbox_messages", "Inbox rows per group and status (not succeeded)",
            labels=labels)
        inbox_age = GaugeMetricFamily(
            f"{PREFIX}_inbox_oldest_due_age_seconds",
            "How long the oldest due (pending or retrying) inbox row has waited, per group; "
            "0 when none is due", labels=["database", "group"])
        groups = {s.group for s in all_subscriptions()}
        seen: dict[tuple[str, str], int] = {}
        age: dict[str, float] = dict.fromkeys(groups, 0.0)
        for group, status, n, oldest in _waiting(ReceivedMessage, using, by_group=True):
            seen[(group, status)] = n
            if oldest is not None:
                age[group] = max(age.get(group, 0.0), oldest.total_seconds())
            groups.add(group)
        for group in sorted(groups):
            for status in GAUGED:
                inbox.add_metric([using, group, status.value], seen.get((group, status), 0))
            inbox_age.add_metric([using, group], max(0.0, age.get(group, 0.0)))
        yield inbox
        yield inbox_age
        yield from self._outbox()
        yield from self._counters(groups)
        nodes = GaugeMetricFamily(f"{PREFIX}_nodes_alive",
                                  "Cluster nodes with a recent heartbeat", labels=["database"])
        nodes.add_metric([using], alive_nodes(using).count())
        yield nodes

    def _outbox(self) -> Iterator[Any]:
        outbox = GaugeMetricFamily(f"{PREFIX}_outbox_messages",
                                   "Outbox rows per status (not succeeded)",
                                   labels=["database", "status"])
        outbox_age = GaugeMetricFamily(
            f"{PREFIX}_outbox_oldest_due_age_seconds",
            "How long the oldest due outbox row has waited for its fan-out; 0 when none is due",
            labels=["database"])
        seen: dict[str, int] = {}
        oldest_age = 0.0
        for _, status, n, oldest in _waiting(PublishedMessage, self.using, by_group=False):
            seen[status] = n
            if oldest is not None:
                oldest_age = max(oldest_age, oldest.total_seconds())
        for status in GAUGED:
            outbox.add_metric([self.using, status.value], seen.get(status, 0))
        outbox_age.add_metric([self.using], oldest_age)
        yield outbox
        yield outbox_age

    def _counters(self, groups: set[str]) -> Iterator[Any]:
        delivered = CounterMetricFamily(
            f"{PREFIX}_delivered", "Inbox rows finished as succeeded, counted by the minute "
            "sweep (two minutes behind)", labels=["database", "group"])
        dead = CounterMetricFamily(
            f"{PREFIX}_dead_lettered", "Inbox rows finished as failed (dead letters), counted "
            "by the minute sweep (two minutes behind)", labels=["database", "group"])
        skipped = CounterMetricFamily(
            f"{PREFIX}_skipped", "Inbox rows an operator skipped (ordering keys), counted by "
            "the minute sweep (two minutes behind)", labels=["database", "group"])
        counts = totals(self.using)
        for group in sorted(groups | {g for g, _ in counts}):
            delivered.add_metric([self.using, group],
                                 counts.get((group, MessageStatus.SUCCEEDED), 0))
            dead.add_metric([self.using, group], counts.get((group, MessageStatus.FAILED), 0))
            skipped.add_metric([self.using, group],
                               counts.get((group, MessageStatus.SKIPPED), 0))
        yield delivered
        yield dead
        yield skipped
        mark = counted_through(self.using)
        if mark is not None:
            through = GaugeMetricFamily(
                f"{PREFIX}_counted_through_timestamp_seconds",
                "The delivery counters include every row finished up to this time",
                labels=["database"])
            through.add_metric([self.using], mark)
            yield through


_cache: dict[tuple[str, ...], tuple[float, bytes]] = {}
_lock = threading.Lock()


def exposition(aliases: tuple[str, ...] | None = None, max_age: float = CACHE_SECONDS) -> bytes:
    """The text exposition of every alias the engine serves, built at most once per
    ``max_age`` seconds in this process (concurrent scrapes wait for one build)."""
    aliases = aliases or get_settings().DATABASES
    with _lock:
        cached = _cache.get(aliases)
        now = time.monotonic()
        if cached is not None and now - cached[0] < max_age:
            return cached[1]
        registry = CollectorRegistry(auto_describe=False)
        for alias in aliases:
            registry.register(DatabaseCollector(alias))
        body = generate_latest(registry)
        _cache[aliases] = (time.monotonic(), body)
        return body


def clear_cache() -> None:
    """Forget cached expositions (tests)."""
    with _lock:
        _cache.clear()
