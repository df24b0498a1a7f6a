"""The task loop: what one task of the task queue does on one database alias.

A task runs passes (dispatch, then execute; :mod:`dispatch`, :mod:`execute`) until its time
budget is spent or it has had nothing to do for IDLE_LINGER seconds with nothing falling due
before the budget ends. A claim that comes back full means a backlog: the task recruits one
more (through the pump). A locked-claim batch group with a backlog (a broker bridge's) may
get threads of its own beside the task's for the task's time (:mod:`extra_claimers`). When
it ends with work due soon, it hands on a nudge. Plain Python and the Django ORM: the task
queue reaches it only through ``tasks.py``.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from django.db import connections

from . import journal
from .claims import ClaimStrategy, get_strategy
from .conf import get_settings
from .dispatch import Dispatcher
from .execute import Executor
from .extra_claimers import ExtraClaimers
from .failures import Failures
from .flow import delete_old_grants
from .handoff import nudge
from .instrumentation import Hooks, get_hooks
from .leases import LeaseKeeper
from .models import PublishedMessage, ReceivedMessage
from .nodes import heartbeat, node_name
from .outcomes import PassStats, SweepStats
from .pump import Pump
from .registry import group_claimers
from .rules import STOP_EXCEPTIONS
from .sweep import Sweeper
from .waiting import IdleWaiter, get_waiter

logger = logging.getLogger("integration_events")


def default_claimer() -> str:
    """"<node>/<worker pid>": the node is the cluster process (nodes.node_name), so the
    admin's Nodes page can match every claim to the cluster that holds it."""
    return f"{node_name()}/{os.getpid()}"


@dataclass
class Worker:
    """Claims and processes messages on one database alias.

    ``run(budget)`` is what a task calls; ``run_once()`` is one pass and ``sweep()`` the
    periodic recovery and cleanup; tests and management commands call them directly. The
    seams (pump, claim strategy, idle waiter, hooks) default to the settings' choices.
    """

    using: str = "default"
    name: str = field(default_factory=default_claimer)
    keep_leases: bool = True
    stop_exceptions: tuple[type[BaseException], ...] = STOP_EXCEPTIONS
    # Recruits more tasks for a backlog and carries the hand-on nudge; None: no recruiting,
    # and hand-on through the configured pump.
    pump: Pump | None = None
    strategy: ClaimStrategy | None = None
    waiter: IdleWaiter | None = None
    hooks: Hooks | None = None
    clock: Callable[[], float] = time.monotonic
    rng: random.Random | None = None
    _last_recruit: float = field(default=float("-inf"), init=False, repr=False)
    _extra: ExtraClaimers | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.strategy = self.strategy or get_strategy()
        self.waiter = self.waiter or get_waiter()
        self.hooks = self.hooks or get_hooks()
        self.failures = Failures(self.using, self.hooks, self.rng)
        self.dispatcher = Dispatcher(self.using, self.name, self.failures, self.hooks)
        self.executor = Executor(self.using, self.name, self.strategy, self.failures,
                                 self.hooks, stop_exceptions=self.stop_exceptions,
                                 clock=self.clock)
        self.sweeper = Sweeper(self.using, self.failures)

    # --- passes -------------------------------------------------------------------------------

    def dispatch_batch(self, limit: int | None = None) -> PassStats:
        """Fan out up to ``limit`` due published messages (default CLAIM_BATCH_SIZE)."""
        stats, full = self.dispatcher.run(limit or get_settings().CLAIM_BATCH_SIZE)
        self._maybe_recruit(full)
        return stats

    def execute_batch(self, limit: int | None = None, until: float = float("inf")
                      ) -> PassStats:
        """Run the handlers of up to ``limit`` due inbox rows; none starts after ``until``
        (this worker's clock)."""
        stats, full = self.executor.run(limit or get_settings().CLAIM_BATCH_SIZE, until)
        if self.executor.backlogged:
            if self._extra is not None:
                self._extra.offer(self.executor.backlogged, group_claimers())
            self.executor.backlogged.clear()
        self._maybe_recruit(full)
        return stats

    def run_once(self, until: float = float("inf")) -> PassStats:
        """One pass: fan out due published messages, then run due received ones."""
        return self.dispatch_batch().add(self.execute_batch(until=until))

    def run_until_idle(self, max_passes: int = 1000) -> PassStats:
        """Pass after pass until a pass finds nothing due (tests, management commands) and
        no extra claimer of this task is running (its open claim may hold rows back: the next
        row of a key it holds, say)."""
        total = PassStats()
        try:
            with self._extra_claimers(total):
                for _ in range(max_passes):
                    # Asked before the pass: a claimer that ends during it may leave rows due
                    # that the pass did not see (the next row of a key it held).
                    busy = self._extra is not None and self._extra.busy()
                    stats = self.run_once()
                    total.add(stats)
                    if stats.total:
                        continue
                    if not busy:
                        break
                    time.sleep(min(get_settings().POLL_INTERVAL, 0.02))
        finally:
            journal.close_connections()
        return total

    def sweep(self) -> SweepStats:
        """Release expired leases and the rows of locked claims that died (failing rows whose
        attempts are used up) and delete finished rows past their expiry."""
        stats = SweepStats()
        for model in (PublishedMessage, ReceivedMessage):
            released, dead = self.sweeper.release_expired(model)
            stats.released += released
            stats.dead += dead
        released, dead = self.sweeper.release_orphaned_claims()
        stats.released += released
        stats.dead += dead
        stats.deleted_published, stats.deleted_received = self.sweeper.delete_all_expired()
        stats.kept_blocking = self.sweeper.kept_blocking()
        stats.forgotten_keys = self.sweeper.forget_idle_keys(self.sweeper.deleted_keys)
        delete_old_grants(self.using)
        if stats.released or stats.dead or stats.deleted_published or stats.deleted_received \
                or stats.forgotten_keys:
            logger.info(
                "sweep alias=%s released=%s dead=%s deleted_published=%s deleted_received=%s "
                "forgotten_keys=%s", self.using, stats.released, stats.dead,
                stats.deleted_published, stats.deleted_received, stats.forgotten_keys,
                extra={"alias": self.using, **stats.as_dict()},
            )
        return stats

    def next_due_in(self) -> float | None:
        """Seconds until the next pending or retrying row falls due (negative: overdue)."""
        due = [model.objects.using(self.using).next_due_in()
               for model in (PublishedMessage, ReceivedMessage)]
        known = [d for d in due if d is not None]
        return min(known) if known else None

    # --- the task loop ------------------------------------------------------------------------

    def run(self, budget: float | None = None) -> PassStats:
        """Process work until ``budget`` seconds have passed (default: the task budget), or
        until there has been nothing to do for IDLE_LINGER seconds and nothing falls due
        before the budget ends. Hands on a nudge if work is due or falls due within
        WAKE_HORIZON."""
        settings = get_settings()
        deadline = self.clock() + (settings.task_time_budget() if budget is None else budget)
        total = PassStats()
        with self._keeping_leases():
            try:
                with self._extra_claimers(total, deadline):
                    self._loop(total, deadline)
            finally:
                self._heartbeat(total.total)
                journal.close_connections()
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("task done alias=%s %s", self.using,
                         " ".join(f"{k}={v}" for k, v in total.as_dict().items()),
                         extra={"alias": self.using, **total.as_dict()})
        return total

    def _loop(self, total: PassStats, deadline: float) -> None:
        idle_since: float | None = None
        while self.clock() < deadline:
            stats = self.run_once(until=deadline)
            total.add(stats)
            if stats.total:
                idle_since = None
                continue
            idle_since = self.clock() if idle_since is None else idle_since
            if not self._wait_for_work(idle_since, deadline):
                break
        else:
            self._hand_on_if_due()

    @contextmanager
    def _extra_claimers(self, total: PassStats, deadline: float = float("inf")
                        ) -> Iterator[None]:
        """Extra claimers for backlogged groups that ask for them (integration_events.
        extra_claimers) while the block runs; their figures are added to ``total`` once each
        has ended (after its current batch, if the block raised)."""
        for_group = getattr(self.executor.strategy, "for_group", None)
        if not group_claimers() or for_group is None \
                or connections[self.using].in_atomic_block or not self.executor.locked_groups():
            yield
            return
        assert self.hooks is not None
        extra = ExtraClaimers(self.using, self.name, for_group, self.hooks, deadline=deadline,
                              clock=self.clock, stop_exceptions=self.stop_exceptions)
        self._extra, stop = extra, True
        try:
            yield
            stop = False
        finally:
            self._extra = None
            total.add(extra.close(stop=stop))

    def _wait_for_work(self, idle_since: float, deadline: float) -> bool:
        """Nothing was done: wait and return True to look again, or return False to end the
        task (handing on a nudge if work falls due soon)."""
        settings = get_settings()
        assert self.waiter is not None
        due_in = self.next_due_in()
        if due_in is not None and due_in <= 0:
            # Due rows exist but another claimer holds their locks right now.
            self.waiter.wait(self.using, min(settings.POLL_INTERVAL, 0.02))
            return True
        now = self.clock()
        lingering = now - idle_since < settings.IDLE_LINGER
        if lingering or (due_in is not None and now + due_in < deadline):
            self.waiter.wait(self.using, settings.POLL_INTERVAL)
            return True
        if due_in is not None and due_in <= settings.WAKE_HORIZON:
            self._hand_on()
        return False

    def _hand_on_if_due(self) -> None:
        """The budget is spent: if anything is due or near, another task carries on."""
        due_in = self.next_due_in()
        if due_in is not None and due_in <= get_settings().WAKE_HORIZON:
            self._hand_on()

    def _hand_on(self) -> None:
        try:
            nudge(self.using, pump=self.pump)
        except Exception:
            logger.warning("hand-on nudge failed alias=%s", self.using, exc_info=True,
                           extra={"alias": self.using})

    def _maybe_recruit(self, full: bool) -> None:
        """A claim came back full (a backlog): ask the pump for one more task, at most once
        per NUDGE_WINDOW (without it a burst behind one nudge runs in one task while every
        other worker idles)."""
        settings = get_settings()
        if not full or self.pump is None or not settings.NUDGE:
            return
        now = self.clock()
        if now - self._last_recruit < settings.NUDGE_WINDOW:
            return
        self._last_recruit = now
        try:
            self.pump.recruit(self.using)
        except Exception:
            logger.warning("recruiting another worker failed alias=%s", self.using,
                           exc_info=True, extra={"alias": self.using})

    def _heartbeat(self, processed: int) -> None:
        try:
            heartbeat(self.using, processed)
        except Exception:
            logger.warning("heartbeat failed alias=%s", self.using, exc_info=True,
                           extra={"alias": self.using})

    @contextmanager
    def _keeping_leases(self) -> Iterator[None]:
        if not self.keep_leases:
            yield
            return
        keeper = LeaseKeeper(self.using, get_settings().LEASE_SECONDS)
        keeper.start()
        self.executor.keeper = keeper
        try:
            yield
        finally:
            self.executor.keeper = None
            keeper.stop()
