"""Extra claimers: more than one claim of a batch group's rows in flight per worker task.

A broker bridge's batch spends most of its time waiting: for the database (the claim's
select, loading the rows, the UPDATE of their outcomes, the commit) and for the broker's
confirms. A worker that claims one batch at a time waits through all of it, and the next
batch's claim, load and encoding wait behind the confirms of the one before. A locked-claim
batch group that asks for more (``Subscription.claimers``; a bridge's SENDERS, 2 by default)
gets, while a worker task runs and the group has a backlog (a pass took all of its rows the
claim strategy would give it: the strategy's ``left_behind``), up to ``claimers - 1``
threads beside the task's own. Each claims only that group's rows (the strategy's
``for_group``) through an Executor, a database connection and a claim journal connection of
its own, pass after pass while its claims leave rows of the group behind; it ends when one
does not, when the task's time is up, or when the task stops. Each claim's transaction locks
its rows (SKIP LOCKED), so no two claimers take the same row, and the rest of a claim (the
journal, the attempts, the outcomes) is what it is in the task's thread.
The task's thread goes on claiming every group; before it ends it waits for its extra
claimers, and their figures count in its own.

Only where locked claims run (PostgreSQL, MariaDB; groups without a rate or concurrency
limit), and never inside a caller's transaction (a test's: other connections would not see
its rows). A claimer that fails logs why and ends; its claim's transaction was rolled back,
so its rows are due again, their attempt counted by the claim journal as for a worker that
died. The group then gets no extra claimer in this process for FAILURE_BACKOFF's delay
(1 s, twice as long after each further failure in a row, at most a minute); a claimer that
ends well clears that.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping

from django.db import connections

from . import journal
from .claims import ClaimStrategy
from .conf import get_settings
from .execute import Executor
from .failures import Failures
from .instrumentation import Hooks
from .outcomes import PassStats
from .registry import group_claim_sizes
from .retry import RetryStrategy
from .rules import STOP_EXCEPTIONS

logger = logging.getLogger("integration_events")

# How long the task waits for an extra claimer to end its batch before it goes on without it
# (a claim that hangs loses its locks after LEASE_SECONDS anyway; see claims._idle_timeout).
JOIN_GRACE = 5.0
# How long a group whose extra claimer failed gets none (the engine's capped exponential
# backoff, without jitter: a wait per failure in a row).
FAILURE_BACKOFF = RetryStrategy(base_delay=1.0, max_delay=60.0, jitter=0.0)

# (alias, group) -> (failures in a row, no extra claimer before this time.monotonic()).
_failed: dict[tuple[str, str], tuple[int, float]] = {}
_failed_lock = threading.Lock()


def backing_off(using: str, group: str) -> float:
    """Seconds until ``group`` may get an extra claimer again (0: now)."""
    with _failed_lock:
        _, until = _failed.get((using, group), (0, 0.0))
    return max(0.0, until - time.monotonic())


def _failed_once_more(using: str, group: str) -> float:
    """Count a failure and return the group's wait; claimers that fail together (several
    SENDERS, one broken database) count once."""
    with _failed_lock:
        count, until = _failed.get((using, group), (0, 0.0))
        now = time.monotonic()
        if until > now:
            return until - now
        wait = FAILURE_BACKOFF.delay(count + 1)
        _failed[(using, group)] = (count + 1, now + wait)
    return wait


def _ended_well(using: str, group: str) -> None:
    with _failed_lock:
        _failed.pop((using, group), None)


class ExtraClaimers:
    """The extra claimer threads of one worker task (see the module docstring)."""

    def __init__(self, using: str, claimer: str, for_group: Callable[[str], ClaimStrategy],
                 hooks: Hooks, *,
                 deadline: float = float("inf"),
                 clock: Callable[[], float],
                 stop_exceptions: tuple[type[BaseException], ...] = STOP_EXCEPTIONS) -> None:
        self.using, self.claimer, self.hooks = using, claimer, hooks
        self.for_group = for_group  # a claim strategy of one group's rows
        self.deadline, self.clock = deadline, clock
        self.stop_exceptions = stop_exceptions
        self.stats = PassStats()
        self._lock = threading.Lock()
        self._running: dict[str, int] = {}
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()

    def offer(self, backlogged: Iterable[str], wanted: Mapping[str, int]) -> None:
        """Groups that had a backlog in the task's last pass: start the claimers they lack
        (``wanted[group] - 1`` beside the task's thread)."""
        if self._stop.is_set():
            return
        for group in backlogged:
            if backing_off(self.using, group):
                continue
            with self._lock:
                lacking = wanted.get(group, 1) - 1 - self._running.get(group, 0)
                for _ in range(max(0, lacking)):
                    thread = threading.Thread(target=self._run, args=(group,), daemon=True,
                                              name=f"integration-events-claimer[{group}]")
                    # Counted once started: a thread that could not start is not waited for.
                    self._running[group] = self._running.get(group, 0) + 1
                    try:
                        thread.start()
                    except BaseException:
                        self._running[group] -= 1
                        raise
                    self._threads.append(thread)

    def busy(self) -> bool:
        """Whether any of the claimers is still running."""
        with self._lock:
            return any(self._running.values())

    def close(self, *, stop: bool) -> PassStats:
        """Wait for the claimers (``stop``: each ends after its current batch, else they go
        on while their claims leave rows behind) and return what they did. Interrupted while
        waiting (a stop exception), it tells them to stop before it lets the exception on."""
        if stop:
            self._stop.set()
        # One grace for all of them, not one each.
        until = None if not stop else time.monotonic() + JOIN_GRACE + get_settings().LEASE_SECONDS
        try:
            for thread in self._threads:
                thread.join(None if until is None else max(0.0, until - time.monotonic()))
                if thread.is_alive():
                    logger.warning("extra claimer still running after the task ended "
                                   "thread=%s", thread.name,
                                   extra={"alias": self.using, "thread": thread.name})
        finally:
            self._stop.set()
        with self._lock:
            return PassStats().add(self.stats)

    def _run(self, group: str) -> None:
        try:
            executor = Executor(self.using, self.claimer, self.for_group(group),
                                Failures(self.using, self.hooks), self.hooks,
                                stop_exceptions=self.stop_exceptions, clock=self.clock)
            limit = group_claim_sizes().get(group) or get_settings().CLAIM_BATCH_SIZE
            while not self._stop.is_set() and self.clock() < self.deadline:
                stats, _ = executor.run(limit, until=self.deadline)
                with self._lock:
                    self.stats.add(stats)
                if group not in executor.backlogged:
                    break
                executor.backlogged.clear()
        except BaseException:
            wait = _failed_once_more(self.using, group)
            logger.exception("extra claimer failed alias=%s group=%s: its claim was rolled "
                             "back and its rows are due again; no extra claimer for the "
                             "group for %.0f s", self.using, group, wait,
                             extra={"alias": self.using, "group": group, "backoff": wait})
        else:
            _ended_well(self.using, group)
        finally:
            from .bridging import resolver  # this thread's broker connections (per thread)

            resolver.close()
            journal.close_connections()
            connections.close_all()  # this thread's own connections
            with self._lock:
                self._running[group] -= 1
