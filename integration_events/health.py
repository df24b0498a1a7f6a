"""The health check: is a cluster alive, is it keeping up, are dead letters piling up?

One function, :func:`check`, behind both ``manage.py integration_events_health`` (cron,
Kubernetes exec probes) and the JSON view (load balancers, HTTP probes). Every query is an
index probe: a heartbeat lookup, the oldest claimable row per status (LIMIT 1 on the
(status, next_attempt_at) index) and a count of failed rows that stops at the threshold.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from django.db.models import DurationField, ExpressionWrapper, F
from django.db.models.functions import Now

from .conf import get_settings
from .models import ACTIVE_STATUSES, MessageStatus, PublishedMessage, ReceivedMessage
from .nodes import alive_nodes, alive_within

# Five minutes: past the default retry backoff's first steps and a busy minute's backlog; a
# cluster that is up and keeping up stays far below it.
DEFAULT_MAX_LAG = 300.0
DEFAULT_MAX_DEAD_LETTERS = 100


@dataclass
class Health:
    """The result: ``ok`` and a one-line ``reason`` (the first problem found, or a summary)."""

    ok: bool
    reason: str
    nodes_alive: int = 0
    lag_seconds: float = 0.0
    dead_letters: int = 0
    # Per database alias: the same three figures.
    databases: dict[str, dict[str, Any]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def lag(using: str = "default") -> float:
    """Seconds the oldest claimable message (due, pending or retrying, of a group that is not
    paused or backing off) has waited; 0 when none is due."""
    waited = ExpressionWrapper(Now() - F("next_attempt_at"), output_field=DurationField())
    worst = 0.0
    for model in (PublishedMessage, ReceivedMessage):
        for status in ACTIVE_STATUSES:
            oldest = (model.objects.using(using).claimable(status)
                      .annotate(waited=waited).values_list("waited", flat=True).first())
            if oldest is not None:
                worst = max(worst, oldest.total_seconds())
    return worst


def dead_letters(using: str = "default", limit: int | None = None) -> int:
    """Failed rows in the outbox and the inbox; counting stops past ``limit`` (a bounded
    index range, however many there are)."""
    total = 0
    for model in (PublishedMessage, ReceivedMessage):
        qs = model.objects.using(using).filter(status=MessageStatus.FAILED).order_by()
        total += (qs[: limit + 1] if limit is not None else qs).count()
    return total


def check(max_lag: float = DEFAULT_MAX_LAG, max_dead_letters: int = DEFAULT_MAX_DEAD_LETTERS,
          databases: tuple[str, ...] | None = None) -> Health:
    """Check every database the engine serves: a node alive (the rule of
    ``integration_events.nodes``), lag at most ``max_lag`` seconds, at most
    ``max_dead_letters`` dead letters."""
    problems: list[str] = []
    health = Health(ok=True, reason="")
    for alias in databases or get_settings().DATABASES:
        nodes = alive_nodes(alias).count()
        waited = lag(alias)
        dead = dead_letters(alias, limit=max_dead_letters)
        health.databases[alias] = {"nodes_alive": nodes, "lag_seconds": round(waited, 3),
                                   "dead_letters": dead}
        health.nodes_alive += nodes
        health.lag_seconds = max(health.lag_seconds, round(waited, 3))
        health.dead_letters += dead
        if not nodes:
            problems.append(
                f"no cluster is alive on database {alias!r}: no heartbeat within "
                f"{alive_within().total_seconds():g} s (is manage.py qcluster running?)")
        if waited > max_lag:
            problems.append(
                f"lag {waited:.0f} s exceeds {max_lag:g} s on database {alias!r}: the oldest "
                "due message has waited that long (add workers, or look for a stuck handler)")
        if dead > max_dead_letters:
            problems.append(
                f"more than {max_dead_letters} dead letters on database {alias!r}: triage "
                "them in the admin (requeue or delete)")
    if problems:
        health.ok = False
        health.reason = problems[0] + (f" (and {len(problems) - 1} more)"
                                       if len(problems) > 1 else "")
    else:
        health.reason = (f"ok: {health.nodes_alive} node(s) alive, lag "
                         f"{health.lag_seconds:.1f} s, {health.dead_letters} dead letter(s)")
    return health
