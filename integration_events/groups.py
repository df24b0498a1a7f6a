"""Group-wide state shared by every cluster (GroupState): backing off a group whose outside
system is down, so that its rows wait without spending attempts; and what the admin shows of
each group (state, limits, backlog)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models.functions import Now
from django.utils import timezone

from .conf import get_settings
from .models import ACTIVE_STATUSES, GroupState, ReceivedMessage, after
from .registry import all_subscriptions, group_limits

logger = logging.getLogger("integration_events")


def hold_back(using: str, group: str, retry_after: float, reason: str) -> float:
    """Keep ``group``'s rows from being claimed for ``retry_after`` seconds, doubling with
    each consecutive backoff up to RETRY_MAX_DELAY. Returns the seconds it waits.

    Consecutive: the group fails again within one wait of its last backoff ending (it came
    back and went away at once); a group that worked for longer starts again from
    ``retry_after``. A report while a backoff is in force (from a unit claimed before it
    began) changes nothing: it returns what is left of that backoff."""
    cap = max(retry_after, get_settings().RETRY_MAX_DELAY)
    with transaction.atomic(using=using):
        state, _ = GroupState.objects.using(using).select_for_update().get_or_create(group=group)
        now = timezone.now()
        until = state.backoff_until
        if until is not None and until > now and state.backoffs:
            return (until - now).total_seconds()
        last_wait = _wait(retry_after, cap, state.backoffs)
        fresh = until is None or not state.backoffs or until < now - timedelta(seconds=last_wait)
        backoffs = 1 if fresh else state.backoffs + 1
        wait = _wait(retry_after, cap, backoffs)
        GroupState.objects.using(using).filter(pk=group).update(
            backoffs=backoffs, backoff_until=after(wait), reason=reason[:2000],
            updated_at=Now())
    logger.warning("group backing off group=%s wait=%.1f reason=%r", group, wait, reason[:200],
                   extra={"group": group, "wait": wait, "alias": using})
    return wait


def _wait(retry_after: float, cap: float, backoffs: int) -> float:
    """The wait of the ``backoffs``-th consecutive backoff (0 for none)."""
    return min(cap, retry_after * 2 ** min(backoffs - 1, 30)) if backoffs else 0.0


@dataclass
class GroupInfo:
    """One subscriber group as the admin's Subscribers page shows it."""

    group: str
    registered: bool
    paused: bool = False
    paused_at: datetime | None = None
    backoff_until: datetime | None = None
    reason: str = ""
    max_concurrency: int | None = None
    rate_limit: str = ""
    waiting: int = 0
    waiting_more: bool = False  # more than WAITING_LIMIT (not counted further)


WAITING_LIMIT = 10_000


def group_infos(using: str = "default") -> list[GroupInfo]:
    """Every registered group and every group with a GroupState row: its state, limits and
    backlog (counted up to WAITING_LIMIT rows, an index range per group)."""
    registered = {sub.group for sub in all_subscriptions()}
    states = {s.group: s for s in GroupState.objects.using(using)}
    limits = group_limits()
    now = timezone.now()
    infos = []
    for group in sorted(registered | set(states)):
        info = GroupInfo(group=group, registered=group in registered)
        state = states.get(group)
        if state is not None:
            info.paused, info.paused_at, info.reason = state.paused, state.paused_at, state.reason
            if state.backoff_until and state.backoff_until > now:
                info.backoff_until = state.backoff_until
        limit = limits.get(group)
        if limit is not None:
            info.max_concurrency = limit.max_concurrency
            info.rate_limit = str(limit.rate_limit) if limit.rate_limit else ""
        waiting = ReceivedMessage.objects.using(using).filter(
            group=group, status__in=ACTIVE_STATUSES).order_by()[: WAITING_LIMIT + 1].count()
        info.waiting, info.waiting_more = min(waiting, WAITING_LIMIT), waiting > WAITING_LIMIT
        infos.append(info)
    return infos
