"""The sweep (every minute): release expired claims and the rows of locked claims that died,
and delete expired finished rows.

A keyed dead letter that still holds back later messages of its key is not deleted when it
expires (that would release them silently): the sweep keeps it, logs it and counts it until an
operator requeues or skips it (docs/ordering.md). An ordering key with no message left in
either table loses its OrderingKey row (its numbering starts again at 1).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from functools import reduce
from operator import or_
from typing import Any

from django.db import connections, transaction
from django.db.models import Exists, F, OuterRef, Q
from django.db.models.functions import Now

from .conf import get_settings
from .exceptions import LeaseExpired
from .failures import Failures, log_extra, log_fields
from .journal import ClaimJournal
from .models import (
    ACTIVE_STATUSES,
    KEYED,
    UNFINISHED_STATUSES,
    MessageBase,
    MessageStatus,
    OrderingKey,
    PublishedMessage,
    ReceivedMessage,
    later_receipts,
)
from .outcomes import Outcome
from .registry import default_retry, get_subscription, unknown_topic_retry
from .retry import Decision, GiveUp, Retry, RetryStrategy

logger = logging.getLogger("integration_events")

# How many kept dead letters a sweep names in its log line.
KEPT_LOGGED = 10
# Keys per statement when forgetting idle ordering keys (two parameters each, and a few
# more: under SQLite's 999 before 3.32 and SQL Server's 2100).
KEYS_PER_STATEMENT = 400
# Per database alias, the last ordering key of the page the previous sweep looked at (this
# process's memory: a new process starts from the first key again).
_key_cursor: dict[str, str] = {}


def _rows_of_key(model: type[MessageBase]) -> Any:
    """Any row of ``model`` with the outer OrderingKey's key, whatever its status (a NOT
    EXISTS probe: one seek per status on ie_pub_key / ie_recv_key)."""
    return model.objects.filter(**KEYED, status__in=MessageStatus.values,
                                ordering_key=OuterRef("key"))


def blocking(model: type[MessageBase]) -> Q:
    """Keyed dead letters of ``model`` that hold back later unfinished rows of their key: in
    their group (inbox), or anywhere (an outbox dead letter blocks every group)."""
    later: Q
    if model is ReceivedMessage:
        later = Q(Exists(later_receipts()))
    else:
        of_key = {**KEYED, "ordering_key": OuterRef("ordering_key"),
                  "ordering_seq__gt": OuterRef("ordering_seq"),
                  "status__in": UNFINISHED_STATUSES}
        later = Exists(PublishedMessage.objects.filter(**of_key)) | Exists(
            ReceivedMessage.objects.filter(**of_key))
    return Q(status=MessageStatus.FAILED) & ~Q(ordering_key="") & Q(later)


class Sweeper:
    """Recovery and cleanup on one database alias."""

    def __init__(self, using: str, failures: Failures) -> None:
        self.using = using
        self.failures = failures
        # Ordering keys of the rows delete_expired deleted (forget_idle_keys looks at them).
        self.deleted_keys: set[str] = set()

    def release_expired(self, model: type[MessageBase]) -> tuple[int, int]:
        """Rows whose lease expired go back to retrying (claimed but never started: without
        using an attempt), or to failed when their attempts are used up. Returns (released,
        dead)."""
        manager = model.objects.using(self.using)
        outcomes = [self._release(model, row) for row in manager.expired_leases()[:1000]]
        return outcomes.count("released"), outcomes.count("dead")

    def _release(self, model: type[MessageBase], row: MessageBase) -> str | None:
        """Release one expired claim; returns "released", "dead", or None if another
        worker renewed or finished it meanwhile."""
        manager = model.objects.using(self.using)
        if row.attempts == 0:
            # Claimed but never started: nothing to count against it.
            changes: dict[str, Any] = {"status": MessageStatus.RETRYING,
                                       "next_attempt_at": Now()}
            decision: Decision = Retry(0.0)
        else:
            error = LeaseExpired(
                f"the worker that took attempt {row.attempts} stopped renewing its claim "
                "(killed, crashed, or hung past the task timeout)")
            changes, decision = self.failures.changes(row, error, self._retry(row))
        final = isinstance(decision, GiveUp)
        with transaction.atomic(using=self.using):
            # Compare-and-set: only if nobody renewed or finished it meanwhile.
            moved = manager.expired_leases().filter(pk=row.pk, lease_token=row.lease_token) \
                .update(lease_token=None, lease_until=None, **changes)
            if moved and row.attempts:
                self.failures.announce(row, changes["last_error"], decision)
                if self.failures.hooks.active:
                    self.failures.hooks.outcome(
                        row, Outcome.FAILED if final else Outcome.RETRIED, error)
        if not moved:
            return None
        logger.warning("lease expired %s final=%s", log_fields(row), final,
                       extra={**log_extra(row), "final": final})
        return "dead" if final else "released"

    def release_orphaned_claims(self) -> tuple[int, int]:
        """Count the attempt of rows whose locked claim died before committing (its claim
        journal row outlived it, integration_events.journal): each goes to retrying with
        error_type LeaseExpired (then claimed alone), or to failed when its attempts or its
        age are used up. A journal row is left for the next sweep while any of its rows is
        locked (its claim still runs) or processing. Returns (released, dead)."""
        if not connections[self.using].features.has_select_for_update_skip_locked:
            return 0, 0  # no locked claims here: nothing writes the journal
        outcomes: list[str] = []
        entries = ClaimJournal.objects.using(self.using).order_by("created_at")
        for token in entries.values_list("pk", flat=True)[:1000]:
            outcomes += self._release_orphan(token)
        return outcomes.count("released"), outcomes.count("dead")

    def _release_orphan(self, token: Any) -> list[str]:
        journal = ClaimJournal.objects.using(self.using)
        manager = ReceivedMessage.objects.using(self.using)
        with transaction.atomic(using=self.using):
            entry = journal.select_for_update(skip_locked=True).filter(pk=token).first()
            if entry is None:
                return []  # committed (deleted) meanwhile, or another sweep has it
            rows = manager.filter(pk__in=entry.rows)
            free = list(rows.select_for_update(skip_locked=True).order_by())
            if len(free) < rows.count() or any(
                    r.status == MessageStatus.PROCESSING for r in free):
                return []  # its claim still holds them, or another worker runs them now
            outcomes = [self._count_orphan(row, entry) for row in free
                        if row.status in ACTIVE_STATUSES]
            journal.filter(pk=token)._raw_delete(self.using)
        for row, outcome in zip([r for r in free if r.status in ACTIVE_STATUSES], outcomes,
                                strict=True):
            logger.warning("locked claim died %s final=%s", log_fields(row), outcome == "dead",
                           extra={**log_extra(row), "final": outcome == "dead"})
        return outcomes

    def _count_orphan(self, row: ReceivedMessage, entry: ClaimJournal) -> str:
        """One row of a dead locked claim: its attempt counted as failed (inside the caller's
        transaction, the row locked)."""
        row.attempts += 1
        error = LeaseExpired(
            f"the worker that took attempt {row.attempts} ({entry.claimed_by}, in a locked "
            "claim) died before it committed: killed, crashed, its database session ended, "
            "or it hung past LEASE_SECONDS")
        changes, decision = self.failures.changes(row, error, self._retry(row))
        ReceivedMessage.objects.using(self.using).filter(pk=row.pk).update(
            attempts=F("attempts") + 1, **changes)
        self.failures.announce(row, changes["last_error"], decision)
        final = isinstance(decision, GiveUp)
        if self.failures.hooks.active:
            self.failures.hooks.outcome(row, Outcome.FAILED if final else Outcome.RETRIED,
                                        error)
        return "dead" if final else "released"

    @staticmethod
    def _retry(row: MessageBase) -> RetryStrategy:
        if isinstance(row, ReceivedMessage):
            sub = get_subscription(row.topic, row.group)
            return sub.retry if sub is not None else unknown_topic_retry()
        return default_retry()

    def delete_expired(self, model: type[MessageBase], *extra: Any) -> int:
        """Delete finished rows past their expiry, CLEANUP_BATCH_SIZE at a time. The DELETE
        repeats the status and expiry condition, so a row an operator requeued after the
        SELECT is left alone."""
        deleted = 0
        batch = get_settings().CLEANUP_BATCH_SIZE
        manager = model.objects.using(self.using)
        while True:
            expired = manager.expired_terminal().filter(*extra)
            found = list(expired.values_list("pk", "ordering_key")[:batch])
            if not found:
                return deleted
            pks = [pk for pk, _ in found]
            self.deleted_keys.update(key for _, key in found if key)
            # _raw_delete: no cascade collection (receipts are deleted first, by their own
            # expiry, and published rows with receipts left are excluded by ``extra``). The
            # pk list is literal values, not a subquery on the same table (MariaDB refuses
            # those in a DELETE, error 1093).
            deleted += manager.expired_terminal().filter(*extra, pk__in=pks) \
                ._raw_delete(self.using)
            if len(pks) < batch:
                return deleted

    def delete_all_expired(self) -> tuple[int, int]:
        """Expired receipts first, then expired published messages with no receipt left;
        keyed dead letters that block their key stay (``kept_blocking``). Returns (published
        deleted, received deleted)."""
        self.deleted_keys = set()
        received = self.delete_expired(ReceivedMessage, ~blocking(ReceivedMessage))
        # NOT EXISTS per candidate row (an index probe on the receipts' message_id), not a
        # NOT IN over every receipt in the table.
        published = self.delete_expired(
            PublishedMessage, ~Exists(ReceivedMessage.objects.filter(message_id=OuterRef("pk"))),
            ~blocking(PublishedMessage))
        return published, received

    def forget_idle_keys(self, keys: Iterable[str] = ()) -> int:
        """Delete the OrderingKey rows of ordering keys with no message left in either table:
        ``keys`` (those of the rows this sweep deleted) and a page of CLEANUP_BATCH_SIZE keys
        after where the previous sweep's page ended (for keys whose rows went otherwise, or
        before this existed). Nothing is left to order against, so the key's numbering may
        start again at 1. Returns how many were deleted."""
        manager = OrderingKey.objects.using(self.using)
        batch = get_settings().CLEANUP_BATCH_SIZE
        cursor = _key_cursor.get(self.using, "")
        page = list(manager.filter(key__gt=cursor).order_by("key")
                    .values_list("key", flat=True)[:batch])
        _key_cursor[self.using] = page[-1] if len(page) == batch else ""
        candidates = sorted(set(keys) | set(page))
        forgotten = 0
        for start in range(0, len(candidates), KEYS_PER_STATEMENT):
            idle = list(manager.filter(key__in=candidates[start:start + KEYS_PER_STATEMENT])
                        .filter(~Exists(_rows_of_key(PublishedMessage)),
                                ~Exists(_rows_of_key(ReceivedMessage)))
                        .values_list("key", "last_seq"))
            forgotten += self.forget_keys(idle)
        return forgotten

    def forget_keys(self, idle: list[tuple[str, int]]) -> int:
        """Delete these (key, last_seq) OrderingKey rows if each still has that last_seq and
        no message. The last_seq condition keeps a key that a publisher numbered since it was
        read: its row lock makes this DELETE wait for that transaction, and the row it then
        finds has another last_seq (PostgreSQL re-checks the row's own columns, not a
        subquery's; InnoDB reads the latest committed row)."""
        if not idle:
            return 0
        same = reduce(or_, (Q(key=key, last_seq=seq) for key, seq in idle))
        return int(OrderingKey.objects.using(self.using).filter(same).filter(
            ~Exists(_rows_of_key(PublishedMessage)), ~Exists(_rows_of_key(ReceivedMessage)))
            ._raw_delete(self.using))

    def kept_blocking(self) -> int:
        """Expired dead letters left in place because they block their ordering key: logged
        (a warning naming some of them) and counted, every sweep, until an operator acts."""
        kept = 0
        for model in (ReceivedMessage, PublishedMessage):
            rows = list(model.objects.using(self.using).expired_terminal()
                        .filter(blocking(model)).order_by("expires_at")
                        .values_list("pk", "ordering_key")[:get_settings().CLEANUP_BATCH_SIZE])
            if not rows:
                continue
            kept += len(rows)
            named = " ".join(f"{pk}:{key}" for pk, key in rows[:KEPT_LOGGED])
            logger.warning(
                "sweep kept expired dead letters that block their ordering key alias=%s "
                "model=%s kept=%s rows=%s (requeue or skip them: docs/ordering.md)",
                self.using, model._meta.model_name, len(rows), named, extra={
                    "alias": self.using, "model": model._meta.model_name, "kept": len(rows),
                    "rows": [str(pk) for pk, _ in rows[:KEPT_LOGGED]]})
        return kept
