"""Group-wide state shared by every cluster (GroupState): backing off a group whose outside
system is down, so that its rows wait without spending attempts."""

from __future__ import annotations

import logging
from datetime import timedelta

from django.db import transaction
from django.db.models.functions import Now
from django.utils import timezone

from .conf import get_settings
from .models import GroupState, after

logger = logging.getLogger("integration_events")


def hold_back(using: str, group: str, retry_after: float, reason: str) -> float:
    """Keep ``group``'s rows from being claimed for ``retry_after`` seconds, doubling with
    each consecutive backoff up to RETRY_MAX_DELAY. Returns the seconds it waits."""
    cap = max(retry_after, get_settings().RETRY_MAX_DELAY)
    with transaction.atomic(using=using):
        state, _ = GroupState.objects.using(using).select_for_update().get_or_create(group=group)
        now = timezone.now()
        # A backoff long past is not "consecutive": start again from retry_after.
        fresh = state.backoff_until is None or state.backoff_until < now - timedelta(seconds=cap)
        backoffs = 1 if fresh else state.backoffs + 1
        wait = min(cap, retry_after * 2 ** min(backoffs - 1, 30))
        GroupState.objects.using(using).filter(pk=group).update(
            backoffs=backoffs, backoff_until=after(wait), reason=reason[:2000],
            updated_at=Now())
    logger.warning("group backing off group=%s wait=%.1f reason=%r", group, wait, reason[:200],
                   extra={"group": group, "wait": wait, "alias": using})
    return wait
