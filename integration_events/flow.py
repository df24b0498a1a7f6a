"""Flow control: fair claiming across groups, per-group concurrency and rate limits, pause.

:class:`FairShare` is the default claim strategy (``CLAIM_STRATEGY``). What it guarantees and
what it costs is in docs/flow-control.md; in short:

- **Fair.** While there is a backlog (more due rows than a claim takes), a pass gives each
  group with due rows about EXECUTE_BATCH_SECONDS of work: ``share = EXECUTE_BATCH_SECONDS /
  the group's recent seconds per handler`` rows, fast groups first (a batch group's time is
  fitted as a fixed cost per batch plus a cost per row: ``_Line``). Groups the oldest rows
  do not show are looked up one by one on the (group, status, next_attempt_at) index. Each
  group also has that much time per pass: a unit of a group that has used it goes back
  unstarted. Retries go before new rows within a group.
- **Paused or backing off.** Claims skip such groups in the same statement; before each unit
  the strategy re-checks them at most every POLL_INTERVAL, so no handler of a group starts
  later than about one poll interval after ``pause_group`` returns.
- **max_concurrency.** A unit of the group runs holding one of its slots (GroupSlot), taken
  and committed before the unit starts and leased like a claim.
- **rate_limit.** Each start is granted just before it, in its own committed transaction that
  counts the grants of the last window (RateGrant, stamped with the database's clock) under a
  lock on the group's GroupState row.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.db import IntegrityError, connections, transaction
from django.db.models import Q
from django.db.models.functions import Now

from .claims import LEASE_EXPIRED, Claim, OldestFirst
from .conf import MAX_ROWS_PER_STATEMENT, get_settings
from .models import (
    GroupSlot,
    GroupState,
    MessageQuerySet,
    MessageStatus,
    RateGrant,
    ReceivedMessage,
    after,
)
from .registry import GroupLimits, Rate, all_subscriptions, group_claim_sizes, group_limits

# A group never seen (no timing yet) is given this many rows in a pass with a backlog.
UNKNOWN_SHARE = 10
PENDING = MessageStatus.PENDING.value
# Weight of the newest handler time in a group's moving average.
EWMA_ALPHA = 0.3
# A rate-limited start waits at most this long for its grant before it goes back.
MAX_GRANT_WAIT = 2.0


@dataclass
class _Pass:
    """What one pass (one claim) of one thread knows."""

    started: float = 0.0
    seconds: dict[str, float] = field(default_factory=dict)  # handler time per group
    checked_at: float = 0.0  # when paused / backing-off groups were last looked up
    held_back: set[str] = field(default_factory=set)
    # The settings this pass runs with (read once: the per-handler checks are hot).
    budget: float = 1.0
    poll: float = 0.1
    # How the pass's claim shared its rows out (None: everything due was in hand).
    shares: _Shares | None = None


class _Shares:
    """How many rows each group may take in one claim (FairShare.select): its share of
    ``limit``, or for a group with a claim size of its own (a broker bridge's BATCH_SIZE) that
    size, within what one IN (...) list holds beside ``limit`` rows of the others
    (conf.WHY_ROWS). That room is counted before anything is looked up: a row locked by the
    claim and then not taken would be kept from other claimers while the batch runs."""

    def __init__(self, strategy: FairShare, limit: int, sizes: dict[str, int]) -> None:
        self.strategy, self.limit, self.sizes = strategy, limit, sizes
        self.rooms: dict[str, int] = {}
        self.spare = MAX_ROWS_PER_STATEMENT - limit
        # Sized groups asked for less than their room because the statement's room ran out
        # (capped), and of those the ones whose lookup found all it asked for (squeezed: more
        # may be due).
        self.capped: set[str] = set()
        self.squeezed: set[str] = set()

    def room(self, group: str) -> int:
        found = self.rooms.get(group)
        if found is None:
            size = self.sizes.get(group)
            if size is None:
                found = self.strategy.share(group, self.limit)
            else:  # a declared batch: all of it, also before the group's cost is known
                found = size if group not in self.strategy.cost else \
                    self.strategy.share(group, size)
            self.rooms[group] = found
        return found

    def cut_short(self, group: str, taken: int) -> bool:
        """Whether ``group`` holding ``taken`` rows got all it could (more may be due)."""
        return taken >= self.room(group) or group in self.squeezed

    def want(self, group: str, have: int) -> int:
        """How many more rows ``group`` may take, holding ``have``."""
        more = self.room(group) - have
        if group not in self.sizes:
            return more
        if more > self.spare:
            self.capped.add(group)
            return max(0, self.spare)
        return more

    def took(self, group: str, asked: int, got: int) -> None:
        """A lookup of ``group`` asked for ``asked`` rows (want) and found ``got``."""
        if group in self.capped and got >= asked:
            self.squeezed.add(group)

    def spent(self, rows: int) -> None:
        """``rows`` more rows of sized groups are taken."""
        self.spare -= rows

    def pick(self, taken: dict[str, list[Any]]) -> list[Any]:
        """At most ``limit`` rows in all of the groups without a claim size of their own, the
        cheapest groups first; a sized group's rows come in its turn, all of them."""
        picked: list[Any] = []
        plain = 0
        for group in sorted(taken, key=lambda g: self.strategy.cost.get(g, 0.0)):
            if group in self.sizes:
                picked += taken[group]
            elif plain < self.limit:
                rows = taken[group][:self.limit - plain]
                picked += rows
                plain += len(rows)
        return picked[:MAX_ROWS_PER_STATEMENT]


class _Line:
    """A batch group's seconds per batch as ``fixed + per_row * rows``, fitted over its
    recent batches (least squares, exponentially weighted): a fixed cost per batch (a
    broker's confirm round trip) taken for a cost per row would shrink the group's claims
    until each held one row, every batch costing about as much as a full one.

    The sums are one tuple, replaced at once: the task's thread and an extra claimer's
    observe the same group (a lost update only weighs one batch less)."""

    __slots__ = ("sums", "per_row")

    def __init__(self) -> None:
        # Exponentially weighted: weight, rows, seconds, rows², rows x seconds.
        self.sums = (0.0, 0.0, 0.0, 0.0, 0.0)
        self.per_row: float | None = None  # the last slope fitted

    def add(self, rows: int, seconds: float) -> None:
        keep, new = 1 - EWMA_ALPHA, EWMA_ALPHA
        weight, n, t, nn, nt = (keep * old + new * value for old, value in zip(
            self.sums, (1.0, rows, seconds, rows * rows, rows * seconds), strict=True))
        self.sums = (weight, n, t, nn, nt)
        mean_rows, mean_seconds = n / weight, t / weight
        spread = nn / weight - mean_rows ** 2
        # Batches of sizes that differ by a tenth or more: a slope to fit (until then, and
        # while batches keep one size, the last slope holds).
        if spread >= (0.1 * mean_rows) ** 2:
            self.per_row = (nt / weight - mean_rows * mean_seconds) / spread

    def rows_within(self, budget: float, limit: int) -> int | None:
        """How many rows a batch takes (at most ``limit``): what fits in ``budget`` seconds
        after the fixed cost, but never so few that the fixed cost is more than half of the
        batch's time (a smaller batch would cost throughput and save little time). None while
        no slope is known. The fixed cost is read at the current sizes, so a slower or faster
        broker counts at once."""
        weight, n, t, _, _ = self.sums
        if self.per_row is None or not weight:
            return None
        if self.per_row <= 0:
            return limit  # the size makes no difference
        fixed = (t - self.per_row * n) / weight
        rows = max(budget - fixed, fixed) / self.per_row
        return max(1, min(limit, int(rows)))


class FairShare(OldestFirst):
    """The default claim strategy: fair across groups and the group limits (module doc)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        # Seconds per handler run, per group (a moving average over this process's runs).
        self.cost: dict[str, float] = {}
        # Groups whose own lookup found no due row, and when (skipped for a while).
        self.empty_at: dict[str, float] = {}
        # Batch groups' seconds per batch against its size.
        self.lines: dict[str, _Line] = {}
        self._local = threading.local()

    @property
    def current(self) -> _Pass:
        state: _Pass | None = getattr(self._local, "state", None)
        if state is None:
            state = self._local.state = _Pass()
        return state

    # --- claiming -----------------------------------------------------------------------------

    def share(self, group: str, limit: int) -> int:
        line = self.lines.get(group)
        if line is not None:
            rows = line.rows_within(self.current.budget, limit)
            if rows is not None:
                return rows
        cost = self.cost.get(group)
        if cost is None:
            return min(limit, UNKNOWN_SHARE)
        return max(1, min(limit, int(self.current.budget / max(cost, 1e-6))))

    def select(self, qs: MessageQuerySet[Any], limit: int, *, skip_locked: bool) -> list[Any]:
        """Up to ``limit`` rows (module doc); a batch group with a claim size of its own
        (``registry.group_claim_sizes``: a broker bridge's BATCH_SIZE) takes up to that many
        of its rows instead, beside them."""
        if qs.model is not ReceivedMessage:
            return super().select(qs, limit, skip_locked=skip_locked)
        now = self.clock()
        settings = get_settings()
        state = self._local.state = _Pass(started=now, checked_at=now,
                                          budget=settings.EXECUTE_BATCH_SECONDS,
                                          poll=settings.POLL_INTERVAL)
        if self.group is not None:  # an extra claimer's: its group's rows, oldest first
            state.shares = _Shares(self, limit, {self.group: limit})
            return super().select(qs, state.shares.room(self.group), skip_locked=skip_locked)
        window = self._window(qs, limit + 1, skip_locked)
        if window and window[0][2] == LEASE_EXPIRED:
            return [window[0][0]]  # a row back from an expired lease is claimed alone
        window = _before_first_suspect(window)
        # Groups at their concurrency limit: their rows stay for a worker that gets a slot
        # (looked up only when the window holds rows of a group with a limit).
        limits = group_limits()
        full = full_groups(qs.db, {g: limits[g] for g in {r[1] for r in window} if g in limits})
        window = [r for r in window if r[1] not in full]
        if len(window) <= limit:  # everything due is in hand: no backlog to share
            return self._fast_first(window)
        shares = state.shares = _Shares(self, limit, group_claim_sizes())
        taken: dict[str, list[Any]] = {}
        for pk, group, _kind, _status in window:
            rows = taken.setdefault(group, [])
            if len(rows) < shares.room(group):
                rows.append(pk)
        shares.spent(sum(len(rows) for g, rows in taken.items() if g in shares.sizes))
        self._top_up(qs, taken, shares, skip_locked,
                     pending={pk for pk, _g, _k, status in window if status == PENDING})
        self._look_up_others(qs, taken, shares, full, limits, now, skip_locked)
        return shares.pick(taken)

    def for_group(self, group: str) -> FairShare:
        """This strategy for one group's rows (``select``'s group-only path), sharing what
        it learns of the groups' costs."""
        one = super().for_group(group)
        assert isinstance(one, FairShare)
        return one

    def left_behind(self, group: str, taken: int) -> bool:
        """Whether this thread's last claim gave ``group`` all the rows it could (so it may
        have more due): its share, or its claim size, or the room one statement had left."""
        if self.group is not None:
            return super().left_behind(group, taken)
        shares = self.current.shares
        return shares is not None and taken > 0 and shares.cut_short(group, taken)

    def _top_up(self, qs: MessageQuerySet[Any], taken: dict[str, list[Any]], shares: _Shares,
                skip_locked: bool, pending: set[Any]) -> None:
        """A group with a claim size of its own that the window cut short: the rest from its
        own index range. This transaction's own locks do not make SKIP LOCKED skip the rows
        in hand, so the lookup asks for as many more as the group has ``pending`` rows in hand
        (the lookup reads pending rows only) and leaves those out."""
        for group in [g for g in taken if g in shares.sizes]:
            want = shares.want(group, len(taken[group]))
            more = []
            if want > 0:
                have = [pk for pk in taken[group] if pk in pending]
                more = self._group_rows(qs, group, want, skip_locked, have=have)
                taken[group] += more
                shares.spent(len(more))
            shares.took(group, want, len(more))

    def _look_up_others(self, qs: MessageQuerySet[Any], taken: dict[str, list[Any]],
                        shares: _Shares, full: set[str], limits: dict[str, GroupLimits],
                        now: float, skip_locked: bool) -> None:
        """Groups whose rows are newer than the window: each looked up on its own index range.
        (Due retries are in the window: it reads them first, across groups.)"""
        candidates = [g for g in sorted(registered_groups() - set(taken) - full)
                      if now - self.empty_at.get(g, float("-inf")) >= _recheck_after()]
        if not candidates:
            return
        held = set(GroupState.objects.using(qs.db).held_back().values_list("group", flat=True))
        # One lookup for every candidate with a concurrency limit, not one per group.
        held |= full_groups(qs.db, {g: limits[g] for g in candidates if g in limits})
        for group in candidates:
            want = 0 if group in held else shares.want(group, 0)
            if want <= 0:
                continue
            rows = self._group_rows(qs, group, want, skip_locked)
            if group in shares.sizes:
                shares.spent(len(rows))
                shares.took(group, want, len(rows))
            if rows:
                taken[group] = rows
            else:
                self.empty_at[group] = now

    def _window(self, qs: MessageQuerySet[Any], limit: int, skip_locked: bool
                ) -> list[tuple[Any, str, str, str]]:
        """The oldest due rows across groups: (pk, group, error_type, status), retries
        first."""
        rows: list[tuple[Any, str, str, str]] = []
        for status in (MessageStatus.RETRYING, MessageStatus.PENDING):
            rows += qs.due_rows(status, limit - len(rows),
                                ("pk", "group", "error_type", "status"),
                                skip_locked=skip_locked)
            if len(rows) >= limit:
                break
        return rows

    def _group_rows(self, qs: MessageQuerySet[Any], group: str, share: int,
                    skip_locked: bool, have: list[Any] | tuple[()] = ()) -> list[Any]:
        """Up to ``share`` new rows of one group that a claim may take (one index range), by
        the same rule as the window's (``claimable``: due, not held back, in its key's
        turn), other than the pending rows of it in hand (``have``).

        The rows in hand are normally the first ones read. A row committed meanwhile that
        sorts ahead of them can push some out, and then up to ``len(have)`` rows past
        ``share`` are read, and locked with SKIP LOCKED, without being taken: bounded, held
        only until this claim commits, and taken by the next claim."""
        rows = qs.due_rows(PENDING, share + len(have), ("pk", "error_type"),
                           skip_locked=skip_locked, group=group)
        known = set(have)
        return [pk for pk, kind in rows
                if kind != LEASE_EXPIRED and pk not in known][:share]

    def _fast_first(self, window: list[tuple[Any, str, str, str]]) -> list[Any]:
        """The rows in hand, the groups with the cheapest handlers first (stable: oldest
        first within a group)."""
        return [r[0] for r in sorted(window, key=lambda r: self.cost.get(r[1], 0.0))]

    # --- admitting and running ----------------------------------------------------------------

    @contextmanager
    def admit(self, claim: Claim[ReceivedMessage], rows: list[ReceivedMessage]
              ) -> Iterator[list[ReceivedMessage]]:
        state = self.current
        rows = [r for r in rows if r.group not in self._held_back(claim.using, state)]
        budget = get_settings().EXECUTE_BATCH_SECONDS
        rows = [r for r in rows if state.seconds.get(r.group, 0.0) < budget]
        if not rows:
            yield []
            return
        limits = group_limits().get(rows[0].group)
        if limits is None or not limits.limited:
            yield rows
            return
        with self._limited(claim, rows, limits) as admitted:
            yield admitted

    @contextmanager
    def _limited(self, claim: Claim[ReceivedMessage], rows: list[ReceivedMessage],
                 limits: GroupLimits) -> Iterator[list[ReceivedMessage]]:
        group, holder = rows[0].group, str(claim.token)
        if limits.rate_limit is not None and not grant(claim.using, group, limits.rate_limit,
                                                       clock=self.clock):
            yield []
            return
        if limits.max_concurrency is None:
            yield rows
            return
        slot = acquire_slot(claim.using, group, limits.max_concurrency, holder)
        if slot is None:
            yield []
            return
        try:
            yield rows
        finally:
            release_slot(claim.using, slot, holder)

    def keep_going(self, row: ReceivedMessage) -> bool:
        """Inside a unit: stop before a handler whose group was paused meanwhile (re-read at
        most every POLL_INTERVAL) or has used its time in this pass."""
        state = self.current
        if state.seconds.get(row.group, 0.0) >= state.budget:
            return False
        return row.group not in self._held_back(row._state.db or "default", state)

    def running(self, row: ReceivedMessage) -> AbstractContextManager[None]:
        return _Timed(self, row.group)

    def running_batch(self, group: str, count: int) -> AbstractContextManager[None]:
        return _Timed(self, group, count, batch=True)

    def _held_back(self, using: str, state: _Pass) -> set[str]:
        now = self.clock()
        if now - state.checked_at >= state.poll:
            state.held_back = set(GroupState.objects.using(using).held_back()
                                  .values_list("group", flat=True))
            state.checked_at = now
        return state.held_back

    def observe(self, group: str, seconds: float, count: int = 1, *, batch: bool = False
                ) -> None:
        """``count`` handler runs of ``group`` (one call of a batch handler for several,
        ``batch``) took ``seconds``."""
        if batch:
            line = self.lines.get(group)
            if line is None:
                line = self.lines[group] = _Line()
            line.add(count, seconds)
        each = seconds / max(count, 1)
        previous = self.cost.get(group)
        self.cost[group] = each if previous is None else (
            EWMA_ALPHA * each + (1 - EWMA_ALPHA) * previous)
        state = self.current
        state.seconds[group] = state.seconds.get(group, 0.0) + seconds
        if self.empty_at:
            self.empty_at.pop(group, None)


class _Timed:
    """Times one handler run for ``FairShare.observe`` (a plain class: this is per handler)."""

    __slots__ = ("strategy", "group", "count", "batch", "started")

    def __init__(self, strategy: FairShare, group: str, count: int = 1, *,
                 batch: bool = False) -> None:
        self.strategy, self.group, self.count, self.batch = strategy, group, count, batch

    def __enter__(self) -> None:
        self.started = self.strategy.clock()

    def __exit__(self, *exc: object) -> None:
        self.strategy.observe(self.group, self.strategy.clock() - self.started, self.count,
                              batch=self.batch)


def _recheck_after() -> float:
    return get_settings().EXECUTE_BATCH_SECONDS


def _before_first_suspect(window: list[tuple[Any, str, str, str]]
                          ) -> list[tuple[Any, str, str, str]]:
    for index, row in enumerate(window):
        if row[2] == LEASE_EXPIRED:
            return window[:index]
    return window


def registered_groups() -> set[str]:
    """Every group a subscriber or a resolver declares."""
    return {sub.group for sub in all_subscriptions()}


# --- max_concurrency: slots -------------------------------------------------------------------


def _free(group: str, limit: int) -> Q:
    return Q(group=group, slot__lt=limit) & (Q(holder="") | Q(lease_until__lt=Now()))


def full_groups(using: str, limits: dict[str, GroupLimits]) -> set[str]:
    """Of ``limits``' groups with a concurrency limit, those whose every slot is held (their
    rows are not claimed); no query when none of them has a concurrency limit."""
    limited = {g: lim.max_concurrency for g, lim in limits.items() if lim.max_concurrency}
    if not limited:
        return set()
    free = Q()
    for group, limit in limited.items():
        free |= _free(group, limit)
    with_free = set(GroupSlot.objects.using(using).filter(free).values_list("group", flat=True))
    existing = set(GroupSlot.objects.using(using).filter(group__in=limited)
                   .values_list("group", flat=True).distinct())
    # A group without slot rows yet has all its slots free.
    return {g for g in limited if g in existing and g not in with_free}


def acquire_slot(using: str, group: str, limit: int, holder: str) -> int | None:
    """Take one of ``group``'s ``limit`` slots for ``holder`` (committed at once, leased for
    LEASE_SECONDS and renewed by the lease keeper); None when every slot is held."""
    manager = GroupSlot.objects.using(using)
    existing = set(manager.filter(group=group, slot__lt=limit).values_list("slot", flat=True))
    for number in sorted(set(range(limit)) - existing):
        # A concurrent worker may create the same slot row: then it exists, which is all
        # this needs (a savepoint keeps an enclosing transaction usable).
        try:
            with transaction.atomic(using=using):
                manager.create(group=group, slot=number)
        except IntegrityError:
            pass
    skip_locked = connections[using].features.has_select_for_update_skip_locked
    with transaction.atomic(using=using):
        free = manager.filter(_free(group, limit)).order_by("slot")
        if skip_locked:
            free = free.select_for_update(skip_locked=True)
        for pk in free.values_list("pk", flat=True)[:limit]:
            # Compare-and-set where rows are not locked (SQLite's single writer).
            if manager.filter(Q(pk=pk) & _free(group, limit)).update(
                    holder=holder, lease_until=after(get_settings().LEASE_SECONDS)):
                return int(pk)
    return None


def release_slot(using: str, slot: int, holder: str) -> None:
    GroupSlot.objects.using(using).filter(pk=slot, holder=holder).update(
        holder="", lease_until=None)


# --- rate_limit: grants -----------------------------------------------------------------------


def grant(using: str, group: str, rate: Rate, *, clock: Callable[[], float] = time.monotonic,
          max_wait: float = MAX_GRANT_WAIT) -> bool:
    """Grant one start of ``group`` now if the last ``rate.seconds`` hold fewer than
    ``rate.starts`` grants; wait (up to ``max_wait``) for the oldest to leave the window
    otherwise. Each attempt is its own transaction, serialised per group by a lock on its
    GroupState row; the grant is stamped with the database's statement clock."""
    deadline = clock() + max_wait
    while True:
        wait = _try_grant(using, group, rate)
        if wait is None:
            return True
        if clock() + wait > deadline:
            return False
        time.sleep(max(wait, 0.001))


def _try_grant(using: str, group: str, rate: Rate) -> float | None:
    """None when granted, else the seconds until the window has room."""
    window = timedelta(seconds=rate.seconds)
    states = GroupState.objects.using(using)
    if not states.filter(group=group).exists():
        try:
            with transaction.atomic(using=using):
                states.create(group=group)
        except IntegrityError:
            pass  # created by a concurrent worker meanwhile
    with transaction.atomic(using=using):
        # The group's row is the lock that serialises its grants across every cluster.
        locked = states.select_for_update().filter(group=group).annotate(db_now=Now())
        now = locked.values_list("db_now", flat=True).get()
        recent = list(
            RateGrant.objects.using(using).filter(group=group, granted_at__gt=now - window)
            .order_by("-granted_at").values_list("granted_at", flat=True)[: rate.starts])
        if len(recent) < rate.starts:
            RateGrant.objects.using(using).create(group=group)
            return None
        return max(0.0, (recent[-1] + window - now).total_seconds())


def delete_old_grants(using: str, older_than: float = 3600.0) -> int:
    """Grants older than every window that could still count them (the sweep calls this)."""
    return int(RateGrant.objects.using(using).filter(
        granted_at__lt=Now() - timedelta(seconds=older_than))._raw_delete(using))
