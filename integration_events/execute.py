"""Execution: run the handlers of claimed inbox rows and record each outcome.

A pass claims due rows (through the claim strategy), then runs them in units:
- first attempts of atomic handlers, up to EXECUTE_BATCH_SIZE to a transaction
  (:mod:`integration_events.batches`), their attempts counted in one UPDATE first;
- batch handlers (run-time groups such as broker bridges), a batch per group; on a
  database with SKIP LOCKED inside the claim's transaction, each row written once (a locked
  claim, :mod:`integration_events.claims`);
- everything else (retries, non-atomic handlers, rows back from an expired lease) one at a
  time, each in its own transaction with its own attempt count, so a handler that kills its
  worker cannot use up its neighbours' attempts again.

The poison rule: anything raised while preparing one row (its headers, its context, its
event) is recorded against that row, which retries or fails by the normal rules; a
ValidationError or corrupt content fails it at once. Database errors and a lost lease are
not the row's fault and propagate.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from functools import partial
from typing import Any

from django.db import connections, transaction

from .batches import run_atomic_chunk, run_batch_handler
from .claims import Claim, ClaimStrategy, claim, locks_can_expire
from .conf import get_settings
from .context import current_context
from .delivery import Prepared, bind_on_commit, build_delivery
from .exceptions import GroupUnavailable, LeaseLost
from .failures import Failures, describe_exception, log_extra, log_fields
from .groups import hold_back
from .instrumentation import Hooks
from .leases import LeaseKeeper
from .models import PublishedMessage, ReceivedMessage
from .outcomes import Outcome, PassStats
from .registry import (
    ExecutionMode,
    batch_groups,
    get_subscription,
    group_limits,
    locked_claim_groups,
    unknown_topic_retry,
)
from .rules import NOT_THE_ROWS_FAULT, STOP_EXCEPTIONS
from .signals import message_succeeded

logger = logging.getLogger("integration_events")


class Executor:
    """One execution pass on one database alias."""

    def __init__(self, using: str, claimer: str, strategy: ClaimStrategy, failures: Failures,
                 hooks: Hooks, keeper: LeaseKeeper | None = None,
                 stop_exceptions: tuple[type[BaseException], ...] = STOP_EXCEPTIONS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.using = using
        self.claimer = claimer
        self.strategy = strategy
        self.failures = failures
        self.hooks = hooks
        self.keeper = keeper
        self.stop_exceptions = stop_exceptions
        self.clock = clock
        # Locked-claim groups of which a pass took all the strategy would give it, so that
        # more may be due (a backlog; ClaimStrategy's left_behind): the worker may start extra
        # claimers for them (extra_claimers); it clears the set after each pass.
        self.backlogged: set[str] = set()

    @property
    def inbox(self) -> Any:
        return ReceivedMessage.objects.using(self.using)

    # --- the pass -----------------------------------------------------------------------------

    def run(self, limit: int, until: float = float("inf")) -> tuple[PassStats, bool]:
        """Claim up to ``limit`` due rows and run them; no handler starts after ``until``
        (``clock()`` time), and what did not start goes back at once. Returns the stats and
        whether the claim came back full. The hooks hear when the pass is over."""
        try:
            return self._run(limit, until)
        finally:
            self.hooks.pass_finished()

    def _run(self, limit: int, until: float) -> tuple[PassStats, bool]:
        stats = PassStats()
        groups = self.locked_groups()
        locked = (groups, partial(self.run_locked, stats)) if groups else None
        taken = claim(ReceivedMessage, self.using, limit, self.claimer, self.strategy,
                      count_attempt=batch_groups(), locked=locked)
        if not taken:
            return stats, taken.locked >= limit
        messages = PublishedMessage.objects.using(self.using).in_bulk(
            {row.message_id for row in taken})
        try:
            with self._holding(taken.token):
                units = deque(self.plan(taken))
                while units and self.clock() <= until:
                    started = self.clock()
                    with self.strategy.admit(taken, units.popleft()) as rows:
                        done, leftover = self.run_unit(taken, rows, messages)
                    stats.add(done)
                    if leftover:  # cut short by EXECUTE_BATCH_SECONDS: admitted again
                        units.appendleft(leftover)
                    self._let_other_writers_in(self.clock() - started)
        finally:
            # Not started (budget spent, not admitted, or a stop exception): back at once.
            self._hand_back_quietly(taken)
        return stats, len(taken) + taken.locked >= limit

    def locked_groups(self) -> frozenset[str]:
        """The batch-handler groups whose rows run under the claim's row locks: those that
        ask for it (``Subscription.locked_claim``; a bridge's LOCKED_CLAIMS) on a database
        with SKIP LOCKED that ends a hung worker's session (PostgreSQL, MariaDB), except
        groups with a rate or concurrency limit (their admission writes must commit before
        the batch starts)."""
        groups = locked_claim_groups()
        if not groups or not connections[self.using].features.has_select_for_update_skip_locked \
                or not locks_can_expire(self.using):
            return frozenset()
        limits = group_limits()
        return frozenset(g for g in groups if g not in limits or not limits[g].limited)

    def run_locked(self, stats: PassStats, rows: list[ReceivedMessage]
                   ) -> BaseException | None:
        """Run a locked claim's rows (inside the claim's transaction, see ``claim``), a batch
        per group; returns a stop exception to raise after the outcomes commit."""
        taken: Claim[ReceivedMessage] = Claim(ReceivedMessage, self.using, None, rows)
        messages = {row.message_id: row.message for row in rows}
        batches: dict[str, list[ReceivedMessage]] = {}
        for row in rows:
            batches.setdefault(row.group, []).append(row)
        left_behind = getattr(self.strategy, "left_behind", None)
        if left_behind is not None:
            self.backlogged.update(g for g, group_rows in batches.items()
                                   if left_behind(g, len(group_rows)))
        try:
            for group_rows in batches.values():
                with self.strategy.admit(taken, group_rows) as admitted:
                    done, _ = self.run_unit(taken, admitted, messages)
                stats.add(done)
        except self.stop_exceptions as stop:
            return stop
        return None

    def plan(self, taken: Claim[ReceivedMessage]) -> Iterator[list[ReceivedMessage]]:
        """The units of a claim, in claim order within each kind: chunks of fresh atomic rows
        (a group with a concurrency limit in chunks of its own), a batch per batch-handler
        group, then every other row alone (rows of a rate-limited group too: each start is
        granted just before it, outside any transaction)."""
        size = get_settings().EXECUTE_BATCH_SIZE
        limits = group_limits()
        chunks: dict[str, list[ReceivedMessage]] = {}
        batches: dict[str, list[ReceivedMessage]] = {}
        singles: list[ReceivedMessage] = []
        for row in taken:
            sub = get_subscription(row.topic, row.group)
            mode = sub.mode if sub is not None else None
            limit = limits.get(row.group)
            if mode is ExecutionMode.BATCH:
                batches.setdefault(row.group, []).append(row)
            elif (mode is ExecutionMode.ATOMIC and row.attempts == 0 and size > 1
                  and (limit is None or limit.rate_limit is None)):
                # Unlimited groups share chunks ("" key); a limited group gets its own.
                chunks.setdefault(row.group if limit else "", []).append(row)
            else:
                singles.append(row)
        for rows in chunks.values():
            for start in range(0, len(rows), size):
                yield rows[start:start + size]
        # A batch handler's unit is not a transaction: all of the group's rows go in one call.
        yield from batches.values()
        for row in singles:
            yield [row]

    def run_unit(self, taken: Claim[ReceivedMessage], rows: list[ReceivedMessage],
                 messages: dict[Any, PublishedMessage]
                 ) -> tuple[PassStats, list[ReceivedMessage]]:
        """Run one unit; returns its stats and the rows it did not start (a chunk cut short by
        EXECUTE_BATCH_SECONDS; their attempt is counted, see ``Claim.counted``)."""
        if not rows:
            return PassStats(), []
        sub = get_subscription(rows[0].topic, rows[0].group)
        if sub is not None and sub.mode is ExecutionMode.BATCH:
            return run_batch_handler(self, taken, rows, messages, sub), []
        if len(rows) > 1 or rows[0].pk in taken.counted:
            return run_atomic_chunk(self, taken, rows, messages)
        stats = PassStats()
        outcome = self.run_single(taken, rows[0], messages.get(rows[0].message_id))
        if outcome is not None:
            stats.count(outcome)
        return stats, []

    # --- shared steps -------------------------------------------------------------------------

    def count_attempts(self, taken: Claim[ReceivedMessage], rows: list[ReceivedMessage]
                       ) -> tuple[list[ReceivedMessage], int]:
        """Count an attempt on each row still held (one committed UPDATE before any handler
        runs). Returns the rows counted and how many were lost meanwhile (marked done)."""
        pks = [r.pk for r in rows]
        if self.inbox.count_attempt(pks, taken.token) == len(pks):
            held = set(pks)
        else:  # some lease was lost meanwhile (rare): find out which rows are still ours
            held = set(self.inbox.held(taken.token).with_pks(pks)
                       .values_list("pk", flat=True))
        counted: list[ReceivedMessage] = []
        for row in rows:
            if row.pk in held:
                row.attempts += 1
                taken.counted.add(row.pk)
                counted.append(row)
            else:
                logger.warning("lease lost before start %s", log_fields(row),
                               extra=log_extra(row))
                taken.done(row)
        return counted, len(rows) - len(counted)

    def prepare(self, taken: Claim[ReceivedMessage], row: ReceivedMessage,
                message: PublishedMessage | None) -> Prepared | Outcome:
        """The row ready to run, or the outcome of recording why it cannot run."""
        try:
            return build_delivery(row, message)
        except NOT_THE_ROWS_FAULT:
            raise
        except Exception as exc:
            sub = get_subscription(row.topic, row.group)
            retry = sub.retry if sub is not None else unknown_topic_retry()
            taken.done(row)
            return self.failures.record(row, taken.token, exc, retry)

    def call(self, prepared: Prepared) -> None:
        """Run one handler in its message's context; its on-commit callbacks keep it."""
        delivery, sub = prepared.delivery, prepared.sub
        start = len(connections[self.using].run_on_commit)
        reset = current_context.set(delivery.context)
        try:
            with self.strategy.running(delivery.row), self.hooks.attempt(delivery):
                if sub.wants_context:
                    sub.handler(delivery.event, delivery.context)
                else:
                    sub.handler(delivery.event)
        finally:
            bind_on_commit(self.using, start)
            current_context.reset(reset)

    def complete(self, rows: list[ReceivedMessage], token: uuid.UUID | None) -> int:
        """Finish ``rows`` as succeeded where ``token`` still holds them (compare-and-set);
        returns how many. The signal fires after commit."""
        done = self.inbox.succeed([r.pk for r in rows], token, get_settings().SUCCEEDED_EXPIRY)
        self.announce_succeeded(rows)
        return int(done)

    def announce_succeeded(self, rows: list[ReceivedMessage]) -> None:
        """The instrumentation's outcome now, the signal after commit."""
        transaction.on_commit(partial(_announce_succeeded, tuple(rows)), using=self.using)
        if self.hooks.active:
            for row in rows:
                self.hooks.outcome(row, Outcome.SUCCEEDED, None)

    def succeed(self, rows: list[ReceivedMessage], token: uuid.UUID | None) -> None:
        """Complete all of ``rows`` or raise LeaseLost (inside a transaction: rolled back)."""
        done = self.complete(rows, token)
        if done != len(rows):
            raise LeaseLost(f"{len(rows) - done} of {len(rows)} rows")

    def back_off(self, taken: Claim[ReceivedMessage], group_rows: list[ReceivedMessage],
                 exc: GroupUnavailable) -> None:
        """The group's outside system is down: hold the group back and give these rows back
        unstarted, their attempt refunded (an outage is not the messages' fault)."""
        hold_back(self.using, group_rows[0].group, exc.retry_after,
                  describe_exception(exc, with_traceback=False))
        self.inbox.hand_back([r.pk for r in group_rows], taken.token, refund=True)
        taken.done(*group_rows)

    def record(self, taken: Claim[ReceivedMessage], prepared: Prepared, exc: BaseException
               ) -> Outcome:
        taken.done(prepared.row)
        return self.failures.record(prepared.row, taken.token, exc, prepared.sub.retry)

    # --- one row ------------------------------------------------------------------------------

    def run_single(self, taken: Claim[ReceivedMessage], row: ReceivedMessage,
                   message: PublishedMessage | None, *, counted: bool = False
                   ) -> Outcome | None:
        """Run one row in its own transaction (atomic handlers) or none (plain ones); None if
        its group backed off (the row went back unstarted)."""
        if not counted and self.count_attempts(taken, [row])[1]:
            return Outcome.LOST
        prepared = self.prepare(taken, row, message)
        if isinstance(prepared, Outcome):
            return prepared
        taken.done(row)
        try:
            if prepared.sub.mode is ExecutionMode.ATOMIC:
                with transaction.atomic(using=self.using):
                    self.call(prepared)
                    self.succeed([row], taken.token)
            else:
                self.call(prepared)
                self.succeed([row], taken.token)
        except LeaseLost:
            logger.warning("lease lost; outcome discarded %s", log_fields(row),
                           extra=log_extra(row))
            return Outcome.LOST
        except GroupUnavailable as exc:
            self.back_off(taken, [row], exc)
            return None
        except BaseException as exc:
            outcome = self.record(taken, prepared, exc)
            if isinstance(exc, self.stop_exceptions):
                raise
            return outcome
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("message succeeded %s", log_fields(row), extra=log_extra(row))
        return Outcome.SUCCEEDED

    # --- helpers ------------------------------------------------------------------------------

    def _let_other_writers_in(self, unit_seconds: float) -> None:
        """SQLite has one writer, and a writer that waits for the lock polls it at most every
        100 ms: back-to-back unit transactions would keep a publisher or an operator's pause
        waiting for seconds. After a long unit, leave a gap of a tenth of its length (at most
        100 ms). Other databases lock rows, not the database: no gap."""
        if unit_seconds >= 0.2 and connections[self.using].vendor == "sqlite":
            time.sleep(min(0.1, unit_seconds / 10))

    def _holding(self, token: uuid.UUID | None) -> AbstractContextManager[None]:
        if self.keeper is None or token is None:
            return nullcontext()
        return self.keeper.holding(token)

    @staticmethod
    def _hand_back_quietly(taken: Claim[ReceivedMessage]) -> None:
        try:
            taken.hand_back_unstarted()
        except Exception:
            logger.warning("could not hand back unstarted rows; their lease will expire",
                           exc_info=True, extra={"alias": taken.using})


def _announce_succeeded(rows: tuple[ReceivedMessage, ...]) -> None:
    for row in rows:
        message_succeeded.send(sender=ReceivedMessage, message=row)
