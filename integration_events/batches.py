"""Many deliveries at once: atomic chunks (many handlers in one transaction) and batch
handlers (one call for many deliveries, e.g. a broker bridge sending a batch).

Atomic chunks run optimistically (EXECUTE_OPTIMISTIC): the handlers run without savepoints;
if one raises, the whole transaction is rolled back (its neighbours' writes and on-commit
callbacks with it), that row's failure is recorded (its handler is not run again), and the
others run again with a savepoint each, so that only the failing handler's work is lost.
Savepoints cost two statements per delivery; failures are rare, so this is the faster path.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from django.db import transaction

from .claims import Claim
from .conf import get_settings
from .delivery import Prepared
from .exceptions import GroupUnavailable, IntegrationEventsError, LeaseLost
from .failures import log_extra, log_fields
from .models import PublishedMessage, ReceivedMessage
from .outcomes import Outcome, PassStats
from .registry import Subscription
from .rules import NOT_THE_ROWS_FAULT

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .context import Delivery
    from .execute import Executor

logger = logging.getLogger("integration_events")
# Django 6.1 renamed savepoint() (5.2 has only the old name).
_savepoint_create: Any = getattr(transaction, "savepoint_create", None) or transaction.savepoint

Messages = dict[Any, PublishedMessage]


class _HandlerRaised(Exception):
    """A handler raised inside a chunk's transaction (which is then rolled back)."""

    def __init__(self, prepared: Prepared, error: BaseException) -> None:
        super().__init__(str(error))
        self.prepared, self.error = prepared, error


@dataclass
class _Result:
    succeeded: list[Prepared] = field(default_factory=list)
    failures: list[tuple[Prepared, Exception]] = field(default_factory=list)
    # Rows not started when EXECUTE_BATCH_SECONDS ran out (their attempt is counted).
    leftover: list[Prepared] = field(default_factory=list)


def _prepare_all(ex: Executor, taken: Claim[ReceivedMessage], rows: list[ReceivedMessage],
                 messages: Messages, stats: PassStats) -> list[Prepared]:
    if taken.token is None:
        # A locked claim: the attempt is counted in the write that records each outcome.
        for row in rows:
            row.attempts += 1
        counted = list(rows)
    else:
        # Rows of a chunk that was cut short come back counted already (a copy: counting
        # the fresh ones adds them to taken.counted).
        already = taken.counted.copy()
        fresh = [r for r in rows if r.pk not in already]
        counted, lost = ex.count_attempts(taken, fresh) if fresh else ([], 0)
        if len(fresh) < len(rows):
            counted += [r for r in rows if r.pk in already]
        stats.count(Outcome.LOST, lost)
    prepared: list[Prepared] = []
    for row in counted:
        ready = ex.prepare(taken, row, messages.get(row.message_id))
        if isinstance(ready, Outcome):
            stats.count(ready)
        else:
            prepared.append(ready)
    return prepared


def run_atomic_chunk(ex: Executor, taken: Claim[ReceivedMessage], rows: list[ReceivedMessage],
                     messages: Messages) -> tuple[PassStats, list[ReceivedMessage]]:
    """Run fresh rows of atomic handlers in one transaction (rows that fail get theirs);
    returns the stats and the rows not started when EXECUTE_BATCH_SECONDS ran out."""
    stats = PassStats()
    prepared = _prepare_all(ex, taken, rows, messages, stats)
    savepoints = not get_settings().EXECUTE_OPTIMISTIC
    while prepared:
        try:
            result = _transaction(ex, taken, prepared, savepoints)
        except _HandlerRaised as raised:
            if isinstance(raised.error, GroupUnavailable):
                # Rolled back; the group's rows go back with their attempt refunded.
                group = raised.prepared.row.group
                ex.back_off(taken, [p.row for p in prepared if p.row.group == group],
                            raised.error)
                prepared = [p for p in prepared if p.row.group != group]
                continue
            # Everything was rolled back and nothing recorded yet: record the row that raised
            # (its handler is not run again), then run the others again.
            stats.count(ex.record(taken, raised.prepared, raised.error))
            prepared = [p for p in prepared if p is not raised.prepared]
            if isinstance(raised.error, ex.stop_exceptions):
                raise raised.error from None
            # After an Exception, with savepoints; after another BaseException (not a stop),
            # the same way as before.
            savepoints = savepoints or isinstance(raised.error, Exception)
            continue
        except LeaseLost as lost:
            # Some rows were taken over after our lease expired: the whole transaction was
            # rolled back; the rows still ours run again one at a time.
            logger.warning("lease lost during a batch; re-running the rest alone: %s", lost,
                           extra={"alias": ex.using})
            return stats.add(_rerun_alone(ex, taken, prepared)), []
        taken.done(*(p.row for p in result.succeeded))
        stats.count(Outcome.SUCCEEDED, len(result.succeeded))
        for failed, error in result.failures:
            stats.count(ex.record(taken, failed, error))
        return stats, [p.row for p in result.leftover]
    return stats, []


def _transaction(ex: Executor, taken: Claim[ReceivedMessage], prepared: list[Prepared],
                 savepoints: bool) -> _Result:
    """One transaction over ``prepared``: run the handlers in order, then complete the
    successful rows with one compare-and-set (or raise LeaseLost)."""
    deadline = ex.clock() + get_settings().EXECUTE_BATCH_SECONDS
    result = _Result()
    with transaction.atomic(using=ex.using):
        for index, item in enumerate(prepared):
            if index and not ex.strategy.keep_going(item.row):
                # Flow control stops the unit here (a pause, the group's time in this pass).
                result.leftover = prepared[index:]
                break
            try:
                if savepoints:
                    try:
                        with transaction.atomic(using=ex.using):
                            ex.call(item)
                    except Exception as exc:
                        result.failures.append((item, exc))
                        continue
                else:
                    ex.call(item)
            except BaseException as exc:
                raise _HandlerRaised(item, exc) from exc
            result.succeeded.append(item)
            if ex.clock() > deadline:
                result.leftover = prepared[index + 1:]
                break
        if result.succeeded:
            ex.succeed([p.row for p in result.succeeded], taken.token)
    if logger.isEnabledFor(logging.DEBUG):
        for item in result.succeeded:
            logger.debug("message succeeded %s", log_fields(item.row),
                         extra=log_extra(item.row))
    return result


def _rerun_alone(ex: Executor, taken: Claim[ReceivedMessage], prepared: list[Prepared]
                 ) -> PassStats:
    stats = PassStats()
    pks = [p.row.pk for p in prepared]
    still_ours = set(ex.inbox.held(taken.token).with_pks(pks).values_list("pk", flat=True))
    for item in prepared:
        if item.row.pk in still_ours:
            outcome = ex.run_single(taken, item.row, item.delivery.message, counted=True)
            if outcome is not None:
                stats.count(outcome)
        else:
            logger.warning("lease lost; outcome discarded %s", log_fields(item.row),
                           extra=log_extra(item.row))
            taken.done(item.row)
            stats.count(Outcome.LOST)
    return stats


class Overlap:
    """The ``sent`` callback of a batch handler whose rows are locked by the claim (not
    leased): while the outside system confirms (a broker's fsync), every row is written
    succeeded, under a savepoint. If every delivery did succeed, that write stands (one
    UPDATE, overlapped with the wait); otherwise it is rolled back and each outcome is
    written as usual."""

    def __init__(self, ex: Executor, rows: list[ReceivedMessage]) -> None:
        self.ex, self.rows = ex, rows
        self.sid: str | None = None
        self.written = 0

    def __call__(self) -> None:
        if self.sid is not None:  # once (a batch sent again on a new connection)
            return
        self.sid = _savepoint_create(using=self.ex.using)
        self.written = self.ex.inbox.succeed([r.pk for r in self.rows], None,
                                             get_settings().SUCCEEDED_EXPIRY)

    def stands(self, results: list[BaseException | None]) -> bool:
        """Keep the write if every delivery succeeded, else roll it back; True if kept."""
        if self.sid is None:
            return False
        if self.written == len(self.rows) and all(e is None for e in results):
            transaction.savepoint_commit(self.sid, using=self.ex.using)
            self.ex.announce_succeeded(self.rows)
            return True
        transaction.savepoint_rollback(self.sid, using=self.ex.using)
        return False


def _call_batch(sub: Subscription, deliveries: list[Delivery], overlap: Overlap | None
                ) -> Sequence[BaseException | None]:
    handler: Any = sub.batch_handler
    if overlap is not None:
        return handler(deliveries, sent=overlap)
    return handler(deliveries)


def run_batch_handler(ex: Executor, taken: Claim[ReceivedMessage], rows: list[ReceivedMessage],
                      messages: Messages, sub: Subscription) -> PassStats:
    """One call of ``sub.batch_handler`` for ``rows`` (not atomic), then one
    compare-and-set for the successful ones and a recorded failure for each other (rows of
    a locked claim: see :class:`Overlap`)."""
    stats = PassStats()
    prepared = _prepare_all(ex, taken, rows, messages, stats)
    if not prepared or sub.batch_handler is None:
        return stats
    stop: BaseException | None = None
    group, deliveries = prepared[0].row.group, [p.delivery for p in prepared]
    results: list[BaseException | None] = []
    overlap = Overlap(ex, [p.row for p in prepared]) \
        if taken.token is None and sub.batch_sent else None
    try:
        with ex.strategy.running_batch(group, len(prepared)), \
                ex.hooks.batch(group, deliveries, results):
            results.extend(_call_batch(sub, deliveries, overlap))
            if len(results) != len(prepared):
                raise IntegrationEventsError(
                    f"batch handler {sub.dotted_path} reported {len(results)} outcomes for "
                    f"{len(prepared)} deliveries")
    except NOT_THE_ROWS_FAULT:
        raise
    except GroupUnavailable as exc:
        if overlap is not None:
            overlap.stands([exc])
        ex.back_off(taken, [p.row for p in prepared], exc)
        return stats
    except BaseException as exc:
        results = [exc] * len(prepared)
        stop = exc if isinstance(exc, ex.stop_exceptions) else None
    if overlap is not None and overlap.stands(results):
        taken.done(*overlap.rows)
        stats.count(Outcome.SUCCEEDED, len(overlap.rows))
        return stats
    succeeded = [p.row for p, error in zip(prepared, results, strict=True) if error is None]
    # Deliveries the outside system could not take because it went away (a broker connection
    # lost mid-batch) go back unstarted, attempt refunded, and the group backs off; the ones
    # it took before that are done.
    unavailable = [(p.row, e) for p, e in zip(prepared, results, strict=True)
                   if isinstance(e, GroupUnavailable)]
    if unavailable:
        ex.back_off(taken, [row for row, _ in unavailable], unavailable[0][1])
    if succeeded:
        # Not atomic: each row still held is completed; a row whose lease was lost meanwhile
        # belongs to another worker now.
        done = ex.complete(succeeded, taken.token)
        stats.count(Outcome.SUCCEEDED, done)
        stats.count(Outcome.LOST, len(succeeded) - done)
        taken.done(*succeeded)
    for item, error in zip(prepared, results, strict=True):
        if error is not None and not isinstance(error, GroupUnavailable):
            stats.count(ex.record(taken, item, error))
    if stop is not None:
        raise stop
    return stats
