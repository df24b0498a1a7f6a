"""Dispatch: fan each due published message out into one inbox row per subscribed group.

The poison rule: anything raised while reading, parsing or routing one row (corrupt JSON,
content nested past the parser's limit, a topic nobody declares here, a resolver that
fails) is recorded against that row, which then retries or fails by the normal rules; the
rows around it are fanned out as usual. Database errors and a lost lease are not the row's
fault and propagate.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Sequence
from contextlib import ExitStack

from django.db import IntegrityError, connections, transaction

from .claims import Claim, OldestFirst, claim
from .conf import get_settings
from .events import event_class_for
from .exceptions import InvalidMessage, UnknownTopic
from .failures import Failures
from .instrumentation import Hooks
from .models import PublishedMessage, ReceivedMessage
from .outcomes import Outcome, PassStats
from .registry import Subscription, default_retry, groups_for, unknown_topic_retry
from .rules import NOT_THE_ROWS_FAULT

logger = logging.getLogger("integration_events")

Routed = tuple[PublishedMessage, dict[str, Subscription]]


def route(row: PublishedMessage) -> dict[str, Subscription]:
    """The groups ``row`` goes to; raises (UnknownTopic, InvalidMessage, ...) for a bad row."""
    if event_class_for(row.topic) is None:
        raise UnknownTopic(
            f"no event class declares topic {row.topic!r} in this process. If a newer "
            "deployment introduced it, deploy subscribers before publishers."
        )
    try:
        json.loads(row.content)
    except RecursionError as exc:
        raise InvalidMessage(
            "content is nested deeper than the JSON parser's recursion limit allows"
        ) from exc
    except ValueError as exc:
        raise InvalidMessage(f"content is not valid JSON: {exc}") from exc
    return groups_for(row)


class Dispatcher:
    """One dispatch pass on one database alias."""

    def __init__(self, using: str, claimer: str, failures: Failures, hooks: Hooks) -> None:
        self.using = using
        self.claimer = claimer
        self.failures = failures
        self.hooks = hooks
        self.strategy = OldestFirst()

    def run(self, limit: int) -> tuple[PassStats, bool]:
        """Claim up to ``limit`` due messages and fan them out; returns the stats and whether
        the claim came back full (a backlog)."""
        stats = PassStats()
        taken = claim(PublishedMessage, self.using, limit, self.claimer, self.strategy,
                      count_attempt=True)
        if not taken:
            return stats, False
        assert taken.token is not None  # leased: no locked claim of the outbox
        routed: list[Routed] = []
        try:
            for row in taken:
                try:
                    routed.append((row, route(row)))
                except NOT_THE_ROWS_FAULT:
                    raise
                except Exception as exc:
                    retry = unknown_topic_retry() if isinstance(exc, UnknownTopic) \
                        else default_retry()
                    stats.count(self.failures.record(row, taken.token, exc, retry))
                    taken.done(row)
            if routed:
                stats.count(Outcome.DISPATCHED, self.fan_out(routed, taken.token))
                taken.done(*(row for row, _ in routed))
        finally:
            # Only after an error: rows not yet fanned out go back (their attempt stays
            # counted, so a row that breaks the whole pass still ends up failed).
            _hand_back_quietly(taken)
        return stats, len(taken) >= limit

    def fan_out(self, routed: Sequence[Routed], token: uuid.UUID) -> int:
        """Insert the inbox rows and finish the messages in one transaction; returns how many
        messages were fanned out (0 if the lease on any of them was lost)."""
        inbox = [
            ReceivedMessage(message_id=row.pk, group=group, topic=row.topic,
                            handler=sub.dotted_path, ordering_key=row.ordering_key,
                            ordering_seq=row.ordering_seq)
            for row, subs in routed for group, sub in subs.items()
        ]
        pks = [row.pk for row, _ in routed]
        try:
            with transaction.atomic(using=self.using), ExitStack() as hooks:
                if self.hooks.active:
                    for row, subs in routed:
                        hooks.enter_context(self.hooks.dispatch(row, list(subs)))
                self.insert_receipts(inbox)
                done = PublishedMessage.objects.using(self.using).succeed(
                    pks, token, get_settings().SUCCEEDED_EXPIRY)
                if done != len(pks):
                    # Some lease was lost: roll back; the rows are someone else's now.
                    raise _LeaseLostInFanOut
        except (_LeaseLostInFanOut, IntegrityError):
            logger.warning("lease lost during fan-out alias=%s rows=%s", self.using, len(pks),
                           extra={"alias": self.using, "rows": len(pks)})
            return 0
        if logger.isEnabledFor(logging.DEBUG):
            for row, subs in routed:
                logger.debug("dispatched message_id=%s topic=%s groups=%s", row.pk,
                             row.topic, ",".join(subs) or "-", extra={
                                 "message_id": str(row.pk), "topic": row.topic,
                                 "groups": list(subs), "alias": self.using})
        return len(pks)

    def insert_receipts(self, inbox: list[ReceivedMessage]) -> None:
        """Insert inbox rows; a (message, group) pair that exists already is skipped, so a
        repeated fan-out is a no-op."""
        if not inbox:
            return
        manager = ReceivedMessage.objects.using(self.using)
        if connections[self.using].features.supports_ignore_conflicts:
            manager.bulk_create(inbox, ignore_conflicts=True, batch_size=500)
            return
        # SQL Server (mssql-django) has no INSERT that ignores conflicts: inside the claim's
        # transaction, insert only the pairs that are missing. A concurrent fan-out of the
        # same message (only after a lease takeover) hits the unique constraint instead.
        existing = set(manager.filter(message_id__in={r.message_id for r in inbox})
                       .values_list("message_id", "group"))
        missing = [r for r in inbox if (r.message_id, r.group) not in existing]
        if missing:
            manager.bulk_create(missing, batch_size=500)


class _LeaseLostInFanOut(Exception):
    pass


def _hand_back_quietly(taken: Claim[PublishedMessage]) -> None:
    try:
        taken.hand_back_unstarted()
    except Exception:
        logger.warning("could not hand back unstarted rows; their lease will expire",
                       exc_info=True, extra={"alias": taken.using})
