"""The engine: claim, dispatch (fan-out), execute, retry, recover and clean up.

Plain Python and the Django ORM; django-q2 only calls ``Worker.run`` (see tasks.py).

Claims are leases in database time: a claimed row gets ``status=processing``, a fresh
``lease_token`` and ``lease_until = Now() + LEASE_SECONDS``. While a handler runs, a keeper
thread pushes ``lease_until`` forward, so a long handler is never started a second time; if the
worker dies the renewals stop and the sweep releases the row once the lease has passed.
Completing a row is a compare-and-set on its ``lease_token``: a worker that lost its lease
cannot overwrite its successor's outcome (its handler transaction is rolled back instead).

Rows are claimed with ``SELECT ... FOR UPDATE SKIP LOCKED`` where the database supports it
(PostgreSQL, MariaDB 10.6+, MySQL 8, SQL Server through mssql-django's READPAST); on SQLite,
which has no row locks, the claim UPDATE re-checks the status (compare-and-set) and the
database's single writer serialises claimers.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from typing import Any, TypeVar

from django.db import connections, models, transaction
from django.db.models import DurationField, Exists, ExpressionWrapper, F, Min, OuterRef, Q
from django.db.models.functions import Now
from pydantic import ValidationError

from .conf import IntegrationEventsSettings, get_settings
from .context import MessageContext, current_context
from .events import event_class_for
from .exceptions import LeaseLost, PermanentFailure
from .models import (
    ACTIVE_STATUSES,
    MessageBase,
    MessageStatus,
    PublishedMessage,
    ReceivedMessage,
)
from .registry import Subscription, get_subscription, subscriptions
from .retry import RetryStrategy
from .signals import message_failed, message_retrying, message_succeeded

logger = logging.getLogger("integration_events")

M = TypeVar("M", bound=MessageBase)

MAX_ERROR_LENGTH = 32_000
# Exceptions that mean "stop this process now": recorded against the message, then re-raised
# (django-q2's task timeout is a SystemExit subclass).
STOP_EXCEPTIONS: tuple[type[BaseException], ...] = (KeyboardInterrupt, SystemExit)


def _after(seconds: float) -> Any:
    """``Now() + seconds`` in database time."""
    return ExpressionWrapper(
        Now() + timedelta(seconds=seconds), output_field=models.DateTimeField()
    )


class _RunWithSavepoints(Exception):
    """A handler failed in an optimistic batch: roll back, record its failure, and run the
    other rows of the batch with savepoints."""

    def __init__(self, row: ReceivedMessage, sub: Subscription, error: Exception) -> None:
        super().__init__(str(error))
        self.row, self.sub, self.error = row, sub, error


def _node_name() -> str:
    from .nodes import node_name

    return node_name()


def describe_exception(exc: BaseException, *, with_traceback: bool = True) -> str:
    kind = type(exc)
    name = kind.__qualname__ if kind.__module__ == "builtins" else (
        f"{kind.__module__}.{kind.__qualname__}"
    )
    text = f"{name}: {exc}"
    if with_traceback and exc.__traceback__ is not None:
        text += "\n\n" + "".join(traceback.format_exception(exc))
    if len(text) > MAX_ERROR_LENGTH:
        text = text[: MAX_ERROR_LENGTH - 40] + "\n... (truncated)"
    return text


@dataclass
class PassStats:
    dispatched: int = 0
    succeeded: int = 0
    retried: int = 0
    failed: int = 0
    lost: int = 0

    @property
    def total(self) -> int:
        return self.dispatched + self.succeeded + self.retried + self.failed + self.lost

    def add(self, other: PassStats) -> None:
        self.dispatched += other.dispatched
        self.succeeded += other.succeeded
        self.retried += other.retried
        self.failed += other.failed
        self.lost += other.lost


@dataclass
class SweepStats:
    released: int = 0
    dead: int = 0
    deleted_published: int = 0
    deleted_received: int = 0


class LeaseKeeper:
    """A thread that renews the leases of the claims this worker holds, every LEASE/3 s."""

    def __init__(self, alias: str, lease_seconds: float) -> None:
        self.alias = alias
        self.lease_seconds = lease_seconds
        self.tokens: set[uuid.UUID] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="ie-lease-keeper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def hold(self, token: uuid.UUID) -> None:
        with self._lock:
            self.tokens.add(token)

    def release(self, token: uuid.UUID) -> None:
        with self._lock:
            self.tokens.discard(token)

    def renew(self) -> int:
        with self._lock:
            tokens = list(self.tokens)
        if not tokens:
            return 0
        renewed = 0
        for model in (ReceivedMessage, PublishedMessage):
            renewed += model._default_manager.using(self.alias).filter(
                status=MessageStatus.PROCESSING, lease_token__in=tokens
            ).update(lease_until=_after(self.lease_seconds))
        return renewed

    def _run(self) -> None:
        interval = max(0.05, self.lease_seconds / 3)
        try:
            while not self._stop.wait(interval):
                try:
                    self.renew()
                except Exception:
                    # A blip (database restart) must not kill the keeper; the next turn retries
                    # and the lease is three intervals long.
                    logger.warning("lease renewal failed alias=%s", self.alias, exc_info=True)
                    connections[self.alias].close()
        finally:
            connections[self.alias].close()


@dataclass
class Worker:
    """Claims and processes messages on one database alias.

    ``run(budget)`` is what a django-q2 task calls; ``run_once()`` is one pass (dispatch, then
    execute) and ``sweep()`` the periodic recovery and cleanup; tests call them directly.
    """

    using: str = "default"
    # "<node>/<worker pid>": the node is the qcluster main process (see nodes.node_name), so
    # the admin's Nodes page can match every claim to the cluster that holds it.
    name: str = field(default_factory=lambda: f"{_node_name()}/{os.getpid()}")
    keep_leases: bool = True
    stop_exceptions: tuple[type[BaseException], ...] = STOP_EXCEPTIONS
    # Called after each pass (testing uses it to run on-commit callbacks in a test transaction).
    pass_wrapper: Callable[[Callable[[], PassStats]], PassStats] | None = None
    # Asks for one more worker (tasks.py enqueues a task if the broker's queue is short). Called
    # when a claim comes back full, i.e. there is a backlog, at most once per NUDGE_WINDOW:
    # without it a burst behind one nudge runs in one task while every other worker idles.
    recruit: Callable[[], object] | None = None
    _keeper: LeaseKeeper | None = field(default=None, init=False, repr=False)
    # Set by run(): past it no further handler is started (the rest of a claim goes back).
    _deadline: float = field(default=float("inf"), init=False, repr=False)
    _last_recruit: float = field(default=float("-inf"), init=False, repr=False)

    @property
    def settings(self) -> IntegrationEventsSettings:
        return get_settings()

    # --- the task loop ----------------------------------------------------------------------

    def run(self, budget: float | None = None) -> PassStats:
        """Process work until ``budget`` seconds have passed, or until there has been nothing to
        do for IDLE_LINGER seconds and nothing falls due before the budget ends. Hands on a
        nudge if due work remains (or falls due within WAKE_HORIZON)."""
        s = self.settings
        budget = s.task_time_budget() if budget is None else budget
        deadline = self._deadline = time.monotonic() + budget
        total = PassStats()
        idle_since: float | None = None
        handed_on = False
        self._start_keeper()
        try:
            while time.monotonic() < deadline:
                stats = self._pass()
                total.add(stats)
                if stats.total:
                    idle_since = None
                    continue
                now = time.monotonic()
                idle_since = idle_since or now
                due_in = self.next_due_in()
                if due_in is not None and due_in <= 0:
                    # Due rows exist but another claimer holds their locks right now.
                    time.sleep(min(s.POLL_INTERVAL, 0.02))
                    continue
                lingering = now - idle_since < s.IDLE_LINGER
                due_before_deadline = due_in is not None and now + due_in < deadline
                if not lingering and not due_before_deadline:
                    if due_in is not None and due_in <= s.WAKE_HORIZON:
                        handed_on = self._hand_on()
                    break
                time.sleep(s.POLL_INTERVAL)
            else:
                # Budget spent: if anything is left or near, another task carries on.
                due_in = self.next_due_in()
                if due_in is not None and due_in <= s.WAKE_HORIZON:
                    handed_on = self._hand_on()
        finally:
            self._deadline = float("inf")
            self._stop_keeper()
            self._heartbeat(total.total)
        logger.debug(
            "task done alias=%s dispatched=%s succeeded=%s retried=%s failed=%s handed_on=%s",
            self.using, total.dispatched, total.succeeded, total.retried, total.failed,
            handed_on,
        )
        return total

    def run_until_idle(self, max_passes: int = 1000) -> PassStats:
        """Pass after pass until a pass finds nothing due (for tests and management commands)."""
        total = PassStats()
        for _ in range(max_passes):
            stats = self._pass()
            total.add(stats)
            if not stats.total:
                break
        return total

    def _heartbeat(self, processed: int) -> None:
        """Keep this node's row fresh for the admin's Nodes page (one UPDATE per task)."""
        from .nodes import heartbeat

        try:
            heartbeat(self.using, processed)
        except Exception:
            logger.warning("heartbeat failed alias=%s", self.using, exc_info=True)

    def _hand_on(self) -> bool:
        from .publisher import nudge

        try:
            return nudge(self.using)
        except Exception:
            logger.warning("hand-on nudge failed alias=%s", self.using, exc_info=True)
            return False

    def _maybe_recruit(self, claimed: int, limit: int) -> None:
        if self.recruit is None or claimed < limit or not self.settings.NUDGE:
            return
        now = time.monotonic()
        if now - self._last_recruit < self.settings.NUDGE_WINDOW:
            return
        self._last_recruit = now
        try:
            self.recruit()
        except Exception:
            logger.warning("recruiting another worker failed alias=%s", self.using,
                           exc_info=True)

    def _start_keeper(self) -> None:
        if self.keep_leases and self._keeper is None:
            self._keeper = LeaseKeeper(self.using, self.settings.LEASE_SECONDS)
            self._keeper.start()

    def _stop_keeper(self) -> None:
        if self._keeper is not None:
            self._keeper.stop()
            self._keeper = None

    def _pass(self) -> PassStats:
        if self.pass_wrapper is not None:
            return self.pass_wrapper(self.run_once)
        return self.run_once()

    def run_once(self) -> PassStats:
        """One pass: fan out due published messages, then run due received ones."""
        stats = PassStats()
        stats.add(self.dispatch_batch())
        stats.add(self.execute_batch())
        return stats

    # --- claims -------------------------------------------------------------------------------

    def claim_queryset(
        self, model: type[M], status: str, *, skip_locked: bool
    ) -> models.QuerySet[M]:
        """Due rows of one status, oldest first, locked and skipping rows others locked."""
        qs = model._default_manager.using(self.using).filter(
            status=status, next_attempt_at__lte=Now()
        ).order_by("next_attempt_at")
        return qs.select_for_update(skip_locked=True) if skip_locked else qs

    def _claim(self, model: type[M], limit: int, *, count_attempt: bool) -> list[M]:
        """Take up to ``limit`` due rows of ``model`` under a fresh lease token."""
        s = self.settings
        token = uuid.uuid4()
        manager = model._default_manager.using(self.using)
        features = connections[self.using].features
        with transaction.atomic(using=self.using):
            ids: list[Any] = []
            # One query per status, each an ordered range of the (status, next_attempt_at)
            # index: with "status IN (...)" InnoDB sorts, and a locking read that sorts locks
            # every due row, which would leave nothing for the other claimers to skip to.
            # Overdue retries go first so that a flood of new messages cannot starve them.
            for status in (MessageStatus.RETRYING, MessageStatus.PENDING):
                qs = self.claim_queryset(
                    model, status, skip_locked=features.has_select_for_update_skip_locked
                )
                ids += qs.values_list("pk", flat=True)[: limit - len(ids)]
                if len(ids) >= limit:
                    break
            if not ids:
                return []
            changes: dict[str, Any] = {
                "status": MessageStatus.PROCESSING,
                "lease_token": token,
                "lease_until": _after(s.LEASE_SECONDS),
                "claimed_by": self.name,
            }
            if count_attempt:
                changes["attempts"] = F("attempts") + 1
            # The status condition makes this a compare-and-set where rows are not locked.
            manager.filter(pk__in=ids, status__in=ACTIVE_STATUSES).update(**changes)
        return list(manager.filter(pk__in=ids, lease_token=token).order_by("next_attempt_at"))

    def _finish(
        self, model: type[MessageBase], pks: Iterable[Any], token: uuid.UUID, **changes: Any
    ) -> int:
        """Compare-and-set on the lease: only the holder of ``token`` can finish the rows."""
        return model._default_manager.using(self.using).filter(
            pk__in=list(pks), lease_token=token, status=MessageStatus.PROCESSING
        ).update(lease_token=None, lease_until=None, **changes)

    def _succeeded_changes(self, last_error: str | None = None) -> dict[str, Any]:
        changes: dict[str, Any] = {
            "status": MessageStatus.SUCCEEDED,
            "finished_at": Now(),
            "expires_at": _after(self.settings.SUCCEEDED_EXPIRY),
        }
        if last_error is not None:
            changes["last_error"] = last_error
        return changes

    def _failure_changes(
        self, attempts: int, error: str, strategy: RetryStrategy, permanent: bool
    ) -> tuple[dict[str, Any], bool]:
        """The update for a failed attempt and whether it is final."""
        if permanent or not strategy.should_retry(attempts):
            return {
                "status": MessageStatus.FAILED,
                "last_error": error,
                "finished_at": Now(),
                "expires_at": _after(self.settings.FAILED_EXPIRY),
            }, True
        return {
            "status": MessageStatus.RETRYING,
            "last_error": error,
            "next_attempt_at": _after(strategy.delay(attempts)),
        }, False

    def _record_failure(
        self,
        model: type[M],
        row: M,
        token: uuid.UUID,
        attempts: int,
        error: str,
        strategy: RetryStrategy,
        *,
        permanent: bool,
        log_fields: str,
    ) -> bool:
        """Move ``row`` to retrying or failed; fires the signals after commit. Returns False if
        the lease was lost (someone else owns the outcome)."""
        changes, final = self._failure_changes(attempts, error, strategy, permanent)
        if not self._finish(model, [row.pk], token, **changes):
            logger.warning("lease lost before recording failure %s", log_fields)
            return False
        first_line = error.split("\n", 1)[0]
        if final:
            logger.error("message failed %s error=%r", log_fields, first_line)
            transaction.on_commit(
                partial(self._announce_failed, model, row.pk, error), using=self.using
            )
        else:
            logger.info("message retrying %s error=%r", log_fields, first_line)
            transaction.on_commit(
                lambda: message_retrying.send(sender=model, message=row, error=error),
                using=self.using,
            )
        return True

    def _announce_failed(self, model: type[MessageBase], pk: Any, error: str) -> None:
        """Signal and threshold callback, once per committed transition to failed."""
        message = model._default_manager.using(self.using).filter(pk=pk).first()
        if message is None:
            return
        message_failed.send(sender=model, message=message, error=error)
        callback = self.settings.failed_threshold_callback()
        if callback is not None:
            try:
                callback(message)
            except Exception:
                logger.exception("FAILED_THRESHOLD_CALLBACK raised message_pk=%s", pk)

    # --- dispatch -----------------------------------------------------------------------------

    def dispatch_batch(self, limit: int | None = None) -> PassStats:
        """Fan out due published messages into one inbox row per subscribed group."""
        stats = PassStats()
        limit = limit or self.settings.CLAIM_BATCH_SIZE
        rows = self._claim(PublishedMessage, limit, count_attempt=True)
        self._maybe_recruit(len(rows), limit)
        if not rows:
            return stats
        token = rows[0].lease_token
        assert token is not None
        fan_out: list[tuple[PublishedMessage, dict[str, Subscription]]] = []
        for row in rows:
            log_fields = f"message_id={row.id} topic={row.topic}"
            if event_class_for(row.topic) is None:
                strategy = RetryStrategy(
                    max_attempts=self.settings.UNKNOWN_TOPIC_MAX_ATTEMPTS,
                    base_delay=self.settings.RETRY_BASE_DELAY,
                    max_delay=self.settings.RETRY_MAX_DELAY,
                    jitter=self.settings.RETRY_JITTER,
                )
                error = (
                    f"UnknownTopic: no event class declares topic {row.topic!r} in this process. "
                    "If a newer deployment introduced it, deploy subscribers before publishers."
                )
                if self._record_failure(
                    PublishedMessage, row, token, row.attempts, error, strategy,
                    permanent=False, log_fields=log_fields,
                ):
                    stats.retried += 1
                continue
            try:
                json.loads(row.content)
            except ValueError as exc:
                error = f"InvalidMessage: content is not valid JSON: {exc}"
                if self._record_failure(
                    PublishedMessage, row, token, row.attempts, error,
                    self.settings.retry_strategy(), permanent=True, log_fields=log_fields,
                ):
                    stats.failed += 1
                continue
            fan_out.append((row, subscriptions(row.topic)))
        if fan_out:
            stats.dispatched += self._fan_out(fan_out, token)
        return stats

    def _fan_out(
        self, items: list[tuple[PublishedMessage, dict[str, Subscription]]], token: uuid.UUID
    ) -> int:
        inbox = [
            ReceivedMessage(
                message_id=row.pk, group=group, topic=row.topic, handler=sub.dotted_path
            )
            for row, subs in items
            for group, sub in subs.items()
        ]
        with_subs = [row.pk for row, subs in items if subs]
        without = [row.pk for row, subs in items if not subs]
        with transaction.atomic(using=self.using):
            if inbox:
                # The unique (message, group) constraint makes a repeated fan-out a no-op.
                ReceivedMessage.objects.using(self.using).bulk_create(
                    inbox, ignore_conflicts=True, batch_size=500
                )
            done = 0
            if with_subs:
                done += self._finish(
                    PublishedMessage, with_subs, token, **self._succeeded_changes()
                )
            if without:
                done += self._finish(
                    PublishedMessage, without, token,
                    **self._succeeded_changes("no subscribers: nothing to deliver"),
                )
            if done != len(items):
                # Some lease was lost: roll back; the rows are someone else's now.
                transaction.set_rollback(True, using=self.using)
                logger.warning("lease lost during fan-out alias=%s rows=%s", self.using,
                               len(items))
                return 0
        for row, subs in items:
            logger.debug("dispatched message_id=%s topic=%s groups=%s", row.id, row.topic,
                         ",".join(subs) or "-")
        return len(items)

    # --- execution ----------------------------------------------------------------------------

    def execute_batch(self, limit: int | None = None) -> PassStats:
        """Run the handlers of due inbox rows.

        Rows on their first attempt whose handler is atomic run in groups of up to
        EXECUTE_BATCH_SIZE: one UPDATE counts their attempts, then one transaction runs each
        handler in its own savepoint and completes the successful ones with one
        compare-and-set. A failing handler rolls back to its savepoint only. Retries (and
        rows recovered from a crashed worker) run one per transaction, so a handler that
        kills its worker cannot use up its neighbours' attempts twice.
        """
        stats = PassStats()
        s = self.settings
        limit = limit or s.CLAIM_BATCH_SIZE
        rows = self._claim(ReceivedMessage, limit, count_attempt=False)
        self._maybe_recruit(len(rows), limit)
        if not rows:
            return stats
        token = rows[0].lease_token
        assert token is not None
        messages = PublishedMessage.objects.using(self.using).in_bulk(
            {row.message_id for row in rows}
        )
        batchable: list[ReceivedMessage] = []
        singles: list[ReceivedMessage] = []
        for row in rows:
            sub = get_subscription(row.topic, row.group)
            fresh = row.attempts == 0 and sub is not None and sub.atomic
            (batchable if fresh and s.EXECUTE_BATCH_SIZE > 1 else singles).append(row)
        if self._keeper is not None:
            self._keeper.hold(token)
        done: set[Any] = set()
        try:
            while batchable:
                if time.monotonic() > self._deadline:
                    break
                chunk, batchable = (
                    batchable[: s.EXECUTE_BATCH_SIZE], batchable[s.EXECUTE_BATCH_SIZE :]
                )
                leftover = self._execute_group(chunk, messages, token, stats, done)
                while leftover:
                    leftover = self._execute_group(
                        leftover, messages, token, stats, done, counted=True
                    )
            for index, row in enumerate(singles):
                if time.monotonic() > self._deadline:
                    break
                try:
                    outcome = self._execute(row, messages.get(row.message_id), token)
                except BaseException:
                    self._release_unstarted(singles[index + 1 :], token)
                    raise
                done.add(row.pk)
                setattr(stats, outcome, getattr(stats, outcome) + 1)
        except BaseException:
            # A stop exception: whatever was not started goes back to the queue now,
            # instead of waiting for its lease to expire.
            self._release_unstarted([r for r in rows if r.pk not in done], token)
            raise
        finally:
            if self._keeper is not None:
                self._keeper.release(token)
        # The task's budget ran out mid-claim: hand back what was not started, at once.
        self._release_unstarted([r for r in rows if r.pk not in done], token)
        return stats

    def _release_unstarted(self, rows: list[ReceivedMessage], token: uuid.UUID) -> None:
        if not rows:
            return
        try:
            ReceivedMessage.objects.using(self.using).filter(
                pk__in=[r.pk for r in rows], lease_token=token, status=MessageStatus.PROCESSING
            ).update(status=MessageStatus.RETRYING, lease_token=None, lease_until=None,
                     next_attempt_at=Now())
        except Exception:
            logger.warning("could not release unstarted rows; their lease will expire",
                           exc_info=True)

    def _log_fields(self, row: ReceivedMessage) -> str:
        return (
            f"message_id={row.message_id} topic={row.topic} group={row.group} "
            f"attempt={row.attempts}"
        )

    def _count_attempts(self, rows: list[ReceivedMessage], token: uuid.UUID) -> list[Any]:
        """Count an attempt for each row still held under ``token``, in its own committed
        statement, before any handler runs; returns the pks that were counted."""
        pks = [r.pk for r in rows]
        manager = ReceivedMessage.objects.using(self.using)
        held = manager.filter(pk__in=pks, lease_token=token, status=MessageStatus.PROCESSING)
        counted = held.update(attempts=F("attempts") + 1)
        if counted == len(pks):
            return pks
        # Some lease was lost meanwhile (rare): find out which rows are still ours.
        return list(held.values_list("pk", flat=True))

    def _prepare(
        self, row: ReceivedMessage, message: PublishedMessage | None, token: uuid.UUID
    ) -> tuple[Subscription, Any, MessageContext] | str:
        """Validate a counted row: (subscription, event, context), or the outcome if it
        failed before its handler could run."""
        sub = get_subscription(row.topic, row.group)

        def fail(error: str, permanent: bool) -> str:
            # Built only on failure: the success path (the hot one) needs neither.
            strategy = sub.retry_strategy() if sub else self.settings.retry_strategy()
            return self._fail(row, token, error, strategy, permanent, self._log_fields(row))

        if message is None:
            return fail("InvalidMessage: the published message row is gone", True)
        if sub is None:
            return fail(
                f"NoHandler: group {row.group!r} has no handler for topic {row.topic!r} in "
                "this process (retried: a newer deployment may have one)",
                False,
            )
        event_type = sub.event_type or event_class_for(row.topic)
        if event_type is None:
            return fail(f"UnknownTopic: no event class declares topic {row.topic!r}", False)
        try:
            event = event_type.model_validate_json(message.content)
        except ValidationError as exc:
            return fail(
                f"InvalidMessage: the payload does not validate as "
                f"{event_type.__module__}.{event_type.__qualname__}: {exc}",
                True,
            )
        except ValueError as exc:
            return fail(f"InvalidMessage: content is not valid JSON: {exc}", True)
        context = MessageContext(
            message_id=message.pk,
            topic=row.topic,
            group=row.group,
            attempt=row.attempts,
            correlation_id=message.correlation_id,
            correlation_sequence=message.correlation_sequence,
            headers={**message.message_headers, "group": row.group},
        )
        return sub, event, context

    def _fail(
        self,
        row: ReceivedMessage,
        token: uuid.UUID,
        error: str,
        strategy: RetryStrategy,
        permanent: bool,
        log_fields: str,
    ) -> str:
        if not self._record_failure(
            ReceivedMessage, row, token, row.attempts, error, strategy,
            permanent=permanent, log_fields=log_fields,
        ):
            return "lost"
        if permanent or not strategy.should_retry(row.attempts):
            return "failed"
        return "retried"

    def _fail_from_exception(
        self, row: ReceivedMessage, sub: Subscription, token: uuid.UUID, exc: BaseException
    ) -> str:
        return self._fail(
            row, token,
            describe_exception(exc, with_traceback=self.settings.STORE_TRACEBACK),
            sub.retry_strategy(), isinstance(exc, PermanentFailure), self._log_fields(row),
        )

    @staticmethod
    def _call(sub: Subscription, event: Any, context: MessageContext) -> None:
        reset = current_context.set(context)
        try:
            if sub.wants_context:
                sub.handler(event, context)
            else:
                sub.handler(event)
        finally:
            current_context.reset(reset)

    def _execute_group(
        self,
        rows: list[ReceivedMessage],
        messages: dict[Any, PublishedMessage],
        token: uuid.UUID,
        stats: PassStats,
        done: set[Any],
        *,
        counted: bool = False,
        savepoints: bool | None = None,
    ) -> list[ReceivedMessage]:
        """Run fresh atomic rows in one transaction; returns the rows left over when
        EXECUTE_BATCH_SECONDS ran out (their attempts are already counted).

        Optimistically (EXECUTE_OPTIMISTIC) the handlers run without savepoints; if one
        raises, the whole transaction is rolled back (its neighbours' writes and on-commit
        callbacks with it) and the same rows run again with a savepoint each, so that only
        the failing handler's work is lost. Savepoints cost two statements per delivery;
        failures are rare, so this is the faster path."""
        if savepoints is None:
            savepoints = not self.settings.EXECUTE_OPTIMISTIC
        if not counted:
            held = set(self._count_attempts(rows, token))
            for row in rows:
                if row.pk in held:
                    row.attempts += 1
                else:
                    logger.warning("lease lost before start %s", self._log_fields(row))
                    stats.lost += 1
                    done.add(row.pk)
            rows = [r for r in rows if r.pk in held]
        ready: list[tuple[ReceivedMessage, Subscription, Any, MessageContext]] = []
        for row in rows:
            prepared = self._prepare(row, messages.get(row.message_id), token)
            if isinstance(prepared, str):
                setattr(stats, prepared, getattr(stats, prepared) + 1)
                done.add(row.pk)
            else:
                ready.append((row, *prepared))
        if not ready:
            return []
        deadline = time.monotonic() + self.settings.EXECUTE_BATCH_SECONDS
        succeeded: list[ReceivedMessage] = []
        failures: list[tuple[ReceivedMessage, Subscription, BaseException]] = []
        leftover: list[ReceivedMessage] = []
        current: ReceivedMessage | None = None
        try:
            with transaction.atomic(using=self.using):
                for index, (row, sub, event, context) in enumerate(ready):
                    current = row
                    if not savepoints:
                        try:
                            self._call(sub, event, context)
                        except Exception as exc:
                            raise _RunWithSavepoints(row, sub, exc) from exc
                        succeeded.append(row)
                        current = None
                    else:
                        try:
                            with transaction.atomic(using=self.using):
                                self._call(sub, event, context)
                        except Exception as exc:
                            failures.append((row, sub, exc))
                        else:
                            succeeded.append(row)
                        current = None
                    if time.monotonic() > deadline:
                        leftover = [r for r, *_ in ready[index + 1 :]]
                        break
                if succeeded:
                    n = self._finish(
                        ReceivedMessage, [r.pk for r in succeeded], token,
                        **self._succeeded_changes(),
                    )
                    if n != len(succeeded):
                        raise LeaseLost(f"{len(succeeded) - n} of {len(succeeded)} rows")
                    finished = tuple(succeeded)
                    transaction.on_commit(
                        partial(self._announce_succeeded, finished), using=self.using
                    )
        except _RunWithSavepoints as failed:
            # Everything above was rolled back and nothing recorded yet: record the failing
            # row (its handler is not run again), then run the rest with savepoints.
            outcome = self._fail_from_exception(failed.row, failed.sub, token, failed.error)
            setattr(stats, outcome, getattr(stats, outcome) + 1)
            done.add(failed.row.pk)
            rest = [r for r, *_ in ready if r.pk != failed.row.pk]
            if not rest:
                return []
            return self._execute_group(
                rest, messages, token, stats, done, counted=True, savepoints=True
            )
        except LeaseLost as lost:
            # Some rows were taken over after our lease expired: the whole group's writes
            # were rolled back; the rows still ours run again one at a time.
            logger.warning("lease lost during a batch; re-running the rest alone: %s", lost)
            still_ours = set(
                ReceivedMessage.objects.using(self.using).filter(
                    pk__in=[r.pk for r in succeeded], lease_token=token,
                    status=MessageStatus.PROCESSING,
                ).values_list("pk", flat=True)
            )
            for row in succeeded:
                if row.pk in still_ours:
                    outcome = self._execute(row, messages.get(row.message_id), token,
                                            counted=True)
                else:
                    logger.warning("lease lost; outcome discarded %s", self._log_fields(row))
                    outcome = "lost"
                setattr(stats, outcome, getattr(stats, outcome) + 1)
                done.add(row.pk)
            succeeded = []
        except BaseException as exc:
            # A stop exception (or a BaseException from a handler): the transaction rolled
            # back; record it against the row that raised it and re-raise if it means stop.
            if current is not None:
                current_sub = get_subscription(current.topic, current.group)
                if current_sub is not None:
                    self._fail_from_exception(current, current_sub, token, exc)
                done.add(current.pk)
            if isinstance(exc, self.stop_exceptions) or current is None:
                raise
            # A non-Exception BaseException from a handler: fail only that row; the others
            # of the group were rolled back with it and run again.
            rest = [r for r, *_ in ready if r.pk != current.pk and r.pk not in done]
            return rest
        for row in succeeded:
            done.add(row.pk)
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug("message succeeded %s", self._log_fields(row))
        stats.succeeded += len(succeeded)
        for row, failed_sub, error in failures:
            outcome = self._fail_from_exception(row, failed_sub, token, error)
            setattr(stats, outcome, getattr(stats, outcome) + 1)
            done.add(row.pk)
        return leftover

    def _announce_succeeded(self, rows: tuple[ReceivedMessage, ...]) -> None:
        for row in rows:
            message_succeeded.send(sender=ReceivedMessage, message=row)

    def _execute(
        self,
        row: ReceivedMessage,
        message: PublishedMessage | None,
        token: uuid.UUID,
        *,
        counted: bool = False,
    ) -> str:
        """Run one inbox row in its own transaction; returns the PassStats field to count
        it under."""
        if not counted:
            if not self._count_attempts([row], token):
                logger.warning("lease lost before start %s", self._log_fields(row))
                return "lost"
            row.attempts += 1
        prepared = self._prepare(row, message, token)
        if isinstance(prepared, str):
            return prepared
        sub, event, context = prepared
        log_fields = self._log_fields(row)
        try:
            if sub.atomic:
                with transaction.atomic(using=self.using):
                    self._call(sub, event, context)
                    if not self._finish(
                        ReceivedMessage, [row.pk], token, **self._succeeded_changes()
                    ):
                        raise LeaseLost(log_fields)
                    transaction.on_commit(
                        lambda: message_succeeded.send(sender=ReceivedMessage, message=row),
                        using=self.using,
                    )
            else:
                self._call(sub, event, context)
                if not self._finish(
                    ReceivedMessage, [row.pk], token, **self._succeeded_changes()
                ):
                    raise LeaseLost(log_fields)
                message_succeeded.send(sender=ReceivedMessage, message=row)
        except LeaseLost:
            logger.warning("lease lost; outcome discarded %s", log_fields)
            return "lost"
        except BaseException as exc:
            outcome = self._fail_from_exception(row, sub, token, exc)
            if isinstance(exc, self.stop_exceptions):
                raise
            return outcome
        logger.debug("message succeeded %s", log_fields)
        return "succeeded"

    # --- timing -------------------------------------------------------------------------------

    def next_due_in(self) -> float | None:
        """Seconds until the next pending or retrying row falls due (negative: overdue)."""
        best: timedelta | None = None
        for model in (PublishedMessage, ReceivedMessage):
            value = model._default_manager.using(self.using).filter(
                status__in=ACTIVE_STATUSES
            ).aggregate(
                due=Min(ExpressionWrapper(F("next_attempt_at") - Now(),
                                          output_field=DurationField()))
            )["due"]
            if value is not None and (best is None or value < best):
                best = value
        return None if best is None else best.total_seconds()

    # --- sweep: recovery and cleanup ----------------------------------------------------------

    def sweep(self) -> SweepStats:
        """Release expired leases (failing rows whose attempts are used up) and delete
        terminal rows past their expiry."""
        stats = SweepStats()
        for model in (PublishedMessage, ReceivedMessage):
            released, dead = self._release_expired(model)
            stats.released += released
            stats.dead += dead
        stats.deleted_received = self._delete_expired(ReceivedMessage)
        # NOT EXISTS per candidate row (an index probe on the receipts' message_id), not a
        # NOT IN over every receipt in the table.
        stats.deleted_published = self._delete_expired(
            PublishedMessage,
            ~Exists(ReceivedMessage.objects.filter(message_id=OuterRef("pk"))),
        )
        if stats.released or stats.dead or stats.deleted_published or stats.deleted_received:
            logger.info(
                "sweep alias=%s released=%s dead=%s deleted_published=%s deleted_received=%s",
                self.using, stats.released, stats.dead, stats.deleted_published,
                stats.deleted_received,
            )
        return stats

    def _release_expired(self, model: type[M]) -> tuple[int, int]:
        manager = model._default_manager.using(self.using)
        expired = list(
            manager.filter(status=MessageStatus.PROCESSING, lease_until__lt=Now())[:1000]
        )
        released = dead = 0
        for row in expired:
            if isinstance(row, ReceivedMessage):
                sub = get_subscription(row.topic, row.group)
                strategy = sub.retry_strategy() if sub else self.settings.retry_strategy()
                log_fields = f"message_id={row.message_id} topic={row.topic} group={row.group}"
            else:
                strategy = self.settings.retry_strategy()
                log_fields = f"message_id={row.pk} topic={getattr(row, 'topic', '')}"
            error = (
                f"LeaseExpired: the worker that took attempt {row.attempts} stopped renewing its "
                "claim (killed, crashed, or hung past the task timeout)"
            )
            if row.attempts == 0:
                # Claimed but never started: nothing to count against it.
                changes: dict[str, Any] = {"status": MessageStatus.RETRYING,
                                           "next_attempt_at": Now()}
                final = False
            else:
                changes, final = self._failure_changes(row.attempts, error, strategy, False)
            with transaction.atomic(using=self.using):
                # Compare-and-set: only if nobody renewed or finished it meanwhile.
                n = manager.filter(
                    pk=row.pk, lease_token=row.lease_token, status=MessageStatus.PROCESSING,
                    lease_until__lt=Now(),
                ).update(lease_token=None, lease_until=None, **changes)
                if n and final:
                    pk = row.pk
                    transaction.on_commit(
                        partial(self._announce_failed, model, pk, error), using=self.using
                    )
            if n:
                logger.warning("lease expired %s attempt=%s final=%s", log_fields,
                               row.attempts, final)
                if final:
                    dead += 1
                else:
                    released += 1
        return released, dead

    def _delete_expired(self, model: type[MessageBase], *extra: Any) -> int:
        deleted = 0
        batch = self.settings.CLEANUP_BATCH_SIZE
        manager = model._default_manager.using(self.using)
        while True:
            pks = list(
                manager.filter(
                    Q(status__in=(MessageStatus.SUCCEEDED, MessageStatus.FAILED)),
                    Q(expires_at__lt=Now()),
                    *extra,
                ).values_list("pk", flat=True)[:batch]
            )
            if not pks:
                return deleted
            # _raw_delete: no cascade collection (receipts are deleted first, by their own
            # expiry, and published rows with receipts left are excluded above).
            deleted += manager.filter(pk__in=pks)._raw_delete(self.using)
            if len(pks) < batch:
                return deleted
