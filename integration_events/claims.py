"""Taking rows: the claim transaction, and the claim strategy (the flow-control seam).

A claim takes due rows under a fresh lease token: ``status=processing``, ``lease_until =
Now() + LEASE_SECONDS`` (database time) and the claimer's name. Rows are chosen with
``SELECT ... FOR UPDATE SKIP LOCKED`` where the database has it (PostgreSQL, MariaDB 10.6+,
MySQL 8, SQL Server through mssql-django's READPAST); on SQLite, which has no row locks, the
claim UPDATE re-checks the status (a compare-and-set) and the single writer serialises
claimers.

A locked claim (batch handlers such as broker bridges, on PostgreSQL and MariaDB): the
claim's transaction stays open while those rows' batch runs, and each row is written once,
with its outcome and its attempt (``token`` None in ``MessageQuerySet.finish``), when the
transaction commits. The row locks keep other claimers off instead of a lease: a worker that
dies rolls back, and the rows are due again at once (sent again: at least once, as with a
lease); the claim journal (integration_events.journal: one row per batch, committed on a
second connection before the batch starts, deleted by the claim's commit) lets the sweep
count the attempt the dead worker spent. A hung worker's session ends after LEASE_SECONDS
idle in the transaction (PostgreSQL, MariaDB). Rows of other groups in the same claim are
leased as above, just before the commit.
"""

from __future__ import annotations

import copy
import math
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol

from django.db import DatabaseError, InterfaceError, connections, transaction
from django.db.models import Case, F, PositiveIntegerField, When
from django.utils.module_loading import import_string

from . import journal
from .conf import IntegrationEventsSettings, get_settings
from .models import ACTIVE_STATUSES, M, MessageQuerySet, MessageStatus, ReceivedMessage, after
from .registry import group_claim_sizes

# error_type of a row whose worker stopped renewing its claim: it might kill its worker
# again, so it is claimed alone and cannot cost its neighbours attempts a second time.
LEASE_EXPIRED = "LeaseExpired"


class ClaimStrategy(Protocol):
    """How a pass picks and paces the inbox rows it runs (one implementation today,
    :class:`OldestFirst`; flow control replaces it through ``CLAIM_STRATEGY``).

    Contract:
    - ``select`` runs inside the claim's transaction and returns the primary keys of at most
      ``limit`` due rows (``qs.claimable(status)``: due, and not of a paused or backing-off
      group; a batch group with a claim size of its own, ``registry.group_claim_sizes``, may
      take up to that many rows beside them) in the order they should run, locked against
      other claimers (``select_for_update(skip_locked=True)`` when ``skip_locked``). Overdue
      retries go before new rows. A row whose ``error_type`` is ``LEASE_EXPIRED`` is taken
      alone (a claim of that one row).
    - ``admit(claim, rows)`` is entered just before each unit of claimed rows starts (outside
      any transaction; a unit is a chunk that runs in one transaction, a batch, or one row)
      and yields the rows that may start now; the rest go back unstarted, without losing an
      attempt. It is exited when the unit is done (release what it acquired there).
    - ``keep_going(row)`` is asked before each handler of a unit after its first; False
      stops the unit there (what ran commits; the rest is admitted again or goes back).
    - ``running(row)`` is entered around each handler run of a claimed row (inside the
      unit's transaction); ``running_batch(group, count)`` around one call of a batch handler
      with ``count`` deliveries of ``group``.

    Optional, for a batch group's extra claimers (integration_events.extra_claimers; a
    strategy without them gets none): ``left_behind(group, taken)``, asked right after a
    claim that took ``taken`` rows of ``group``, says whether it left due rows of it behind
    (the group has a backlog); ``for_group(group)`` returns a strategy that selects that
    group's rows only, for a claimer thread of its own.
    """

    def select(self, qs: MessageQuerySet[Any], limit: int, *, skip_locked: bool) -> list[Any]:
        ...

    def admit(self, claim: Claim[ReceivedMessage], rows: list[ReceivedMessage]
              ) -> AbstractContextManager[list[ReceivedMessage]]:
        ...

    def keep_going(self, row: ReceivedMessage) -> bool:
        ...

    def running(self, row: ReceivedMessage) -> AbstractContextManager[None]:
        ...

    def running_batch(self, group: str, count: int) -> AbstractContextManager[None]:
        ...


class OldestFirst:
    """Due rows oldest first across all groups: overdue retries, then new rows; of one
    ``group`` only, if given (an extra claimer's, integration_events.extra_claimers)."""

    group: str | None = None  # subclasses that do not call __init__ claim every group
    # This thread's last select: whether it came back full, and its limit (left_behind); per
    # thread, since one strategy object serves every thread of a process.
    _last = threading.local()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A subclass with a select of its own may not honour ``group`` or record what
        ``left_behind`` reads: unless it defines both of those too, it gets no extra
        claimers (the engine looks for them with getattr)."""
        super().__init_subclass__(**kwargs)
        if "select" in cls.__dict__ and not {"for_group", "left_behind"} <= set(cls.__dict__):
            cls.for_group = None  # type: ignore[assignment,method-assign]
            cls.left_behind = None  # type: ignore[assignment,method-assign]

    def __init__(self, group: str | None = None) -> None:
        self.group = group

    def select(self, qs: MessageQuerySet[Any], limit: int, *, skip_locked: bool) -> list[Any]:
        pks: list[Any] = []
        one = {"group": self.group} if self.group is not None else {}
        last = OldestFirst._last
        last.full, last.limit = False, limit
        # One query per status, each an ordered range of the (status, next_attempt_at) index:
        # with "status IN (...)" InnoDB sorts, and a locking read that sorts locks every due
        # row, which would leave nothing for the other claimers to skip to.
        for status in (MessageStatus.RETRYING, MessageStatus.PENDING):
            rows = qs.due_rows(status, limit - len(pks), ("pk", "error_type"),
                               skip_locked=skip_locked, **one)
            for pk, kind in rows:
                if kind == LEASE_EXPIRED:
                    return pks or [pk]
                pks.append(pk)
            if len(pks) >= limit:
                last.full = True
                break
        return pks

    def left_behind(self, group: str, taken: int) -> bool:
        """The last claim came back full, and the group had all of it or its claim size (a
        group with a few rows in a claim full of others' is not taken for a backlog)."""
        last = OldestFirst._last
        if not getattr(last, "full", False):
            return False
        size = group_claim_sizes().get(group, last.limit)
        return taken >= min(size, last.limit)

    def for_group(self, group: str) -> OldestFirst:
        """This strategy for one group's rows (a copy sharing what it has learnt)."""
        one = copy.copy(self)
        one.group = group
        return one

    def admit(self, claim: Claim[ReceivedMessage], rows: list[ReceivedMessage]
              ) -> AbstractContextManager[list[ReceivedMessage]]:
        return nullcontext(rows)

    def keep_going(self, row: ReceivedMessage) -> bool:
        return True

    def running(self, row: ReceivedMessage) -> AbstractContextManager[None]:
        return nullcontext()

    def running_batch(self, group: str, count: int) -> AbstractContextManager[None]:
        return nullcontext()


_memo: tuple[IntegrationEventsSettings, ClaimStrategy] | None = None


def get_strategy() -> ClaimStrategy:
    """The CLAIM_STRATEGY of the settings, instantiated once per settings object."""
    global _memo
    settings = get_settings()
    if _memo is None or _memo[0] is not settings:
        _memo = (settings, import_string(settings.CLAIM_STRATEGY)())
    return _memo[1]


@dataclass
class Claim(Generic[M]):
    """Rows taken under one lease token, and which of them are finished."""

    model: type[M]
    using: str
    # None: rows locked by the claim's open transaction instead of leased (a locked claim).
    token: uuid.UUID | None
    rows: list[M]
    finished: set[Any] = field(default_factory=set)
    # Rows whose attempt is counted although they have not finished (a unit cut short).
    counted: set[Any] = field(default_factory=set)
    # Rows of the claim run under lock before it committed (not in ``rows``).
    locked: int = 0

    def __iter__(self) -> Iterator[M]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def done(self, *rows: M) -> None:
        self.finished.update(r.pk for r in rows)

    def unstarted(self) -> list[M]:
        return [r for r in self.rows if r.pk not in self.finished]

    def hand_back_unstarted(self) -> int:
        """Return every row not marked done, at once and without using an attempt (one
        counted for a row that then did not start is given back)."""
        rows = self.unstarted()
        if not rows:
            return 0
        self.done(*rows)
        if self.token is None:  # locked, never written: due again when the claim commits
            return len(rows)
        manager = self.model.objects.using(self.using)
        refund = [r.pk for r in rows if r.pk in self.counted]
        plain = [r.pk for r in rows if r.pk not in self.counted]
        handed = manager.hand_back(plain, self.token) if plain else 0
        if refund:
            handed += manager.hand_back(refund, self.token, refund=True)
        return int(handed)


# Runs the rows of a locked claim inside its transaction; returns a stop exception to raise
# once the outcomes have committed (None to go on).
LockedRun = Callable[[list[ReceivedMessage]], BaseException | None]


def claim(model: type[M], using: str, limit: int, claimer: str, strategy: ClaimStrategy, *,
          count_attempt: bool | frozenset[str],
          locked: tuple[frozenset[str], LockedRun] | None = None) -> Claim[M]:
    """Take up to ``limit`` due rows of ``model`` under a fresh lease token.

    ``count_attempt`` counts the attempt in the claim itself: True for every row (dispatch),
    or a set of groups (inbox rows of batch handlers, which start as soon as they are claimed:
    one commit fewer per batch). Other rows are counted just before each handler runs
    instead; either way a row handed back unstarted gets its attempt back.

    ``locked`` (groups, run): on a database with SKIP LOCKED, the claimed inbox rows of these
    groups are not leased but run by ``run`` inside the claim's transaction (see the module
    docstring); the returned Claim holds the other rows (``locked`` counts these)."""
    token = uuid.uuid4()
    manager: Any = model.objects.using(using)
    skip_locked = connections[using].features.has_select_for_update_skip_locked
    ran, stop = 0, None
    outermost = not connections[using].in_atomic_block
    with transaction.atomic(using=using):
        _no_jit(using)
        pks = strategy.select(manager.all(), limit, skip_locked=skip_locked)
        if pks and locked is not None and skip_locked:
            ran, stop, pks = _run_locked(manager, using, pks, *locked, outermost=outermost,
                                         token=token, claimer=claimer)
        if pks and stop is None:
            _lease(manager, pks, token, claimer, count_attempt)
    if stop is not None:
        raise stop
    if not pks:
        return Claim(model, using, token, [], locked=ran)
    position = {pk: i for i, pk in enumerate(pks)}
    held: list[M] = list(manager.held(token).with_pks(pks))
    rows = sorted(held, key=lambda r: position[r.pk])
    taken = Claim(model, using, token, rows, locked=ran)
    if count_attempt and count_attempt is not True:
        taken.counted.update(r.pk for r in rows if getattr(r, "group", None) in count_attempt)
    return taken


def _no_jit(using: str) -> None:
    """On PostgreSQL, no JIT compilation in the claim's transaction (SET LOCAL: the session
    keeps its setting). A claim's select is estimated at the cost of the whole due range (the
    LIMIT does not lower it), so with about 8,000 due rows it passes jit_above_cost and each
    claim spent 25-30 ms compiling a query that runs in one: a third of a bridge's batch."""
    connection = connections[using]
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL jit = off")


def _lease(manager: Any, pks: list[Any], token: uuid.UUID, claimer: str,
           count_attempt: bool | frozenset[str]) -> None:
    changes: dict[str, Any] = {
        "status": MessageStatus.PROCESSING,
        "lease_token": token,
        "lease_until": after(get_settings().LEASE_SECONDS),
        "claimed_by": claimer,
    }
    if count_attempt is True:
        changes["attempts"] = F("attempts") + 1
    elif count_attempt:
        changes["attempts"] = Case(
            When(group__in=sorted(count_attempt), then=F("attempts") + 1),
            default=F("attempts"), output_field=PositiveIntegerField())
    # The status condition makes this a compare-and-set where rows are not locked.
    manager.with_pks(pks).filter(status__in=ACTIVE_STATUSES).update(**changes)


def _run_locked(manager: Any, using: str, pks: list[Any], groups: frozenset[str],
                run: LockedRun, *, outermost: bool, token: uuid.UUID, claimer: str
                ) -> tuple[int, BaseException | None, list[Any]]:
    """Load the claimed rows of ``groups`` with their messages (one query) and run them
    under the claim's row locks; returns how many, a stop exception, and the other pks.
    The claim journal (integration_events.journal) records them first, so a worker that dies
    before the commit still spends their attempt."""
    if manager.model is not ReceivedMessage:
        return 0, None, pks
    # By primary key alone, unordered: with a group condition too, stale statistics after a
    # burst lead PostgreSQL's planner to scan the whole group per claim. Rows of other
    # groups in the claim are read here too (and again once leased).
    rows = [row for row in manager.with_pks(pks).select_related("message").order_by()
            if row.group in groups]
    if not rows:
        return 0, None, pks
    position = {pk: i for i, pk in enumerate(pks)}
    rows.sort(key=lambda r: position[r.pk])
    if not outermost:
        # A caller's transaction (a test's, or deliver_pending inside atomic): the timeout
        # would outlive the claim, and a journal row committed beside it would outlive the
        # caller's rollback. A death there rolls the caller back too, as it would a lease.
        stop = run(rows)
    else:
        _idle_timeout(using, get_settings().LEASE_SECONDS)
        journal.record(using, token, [r.pk for r in rows], claimer)
        # Deleted at once, before anything is sent: the DELETE commits with the outcomes,
        # and until then it locks the journal row, so a sweep can tell a live claim (row
        # locked) from a dead one (the rollback restored the row, unlocked).
        journal.forget(using, token)
        try:
            stop = run(rows)
        finally:
            _idle_timeout(using, None)
    ids = {r.pk for r in rows}
    return len(rows), stop, [pk for pk in pks if pk not in ids]


def locks_can_expire(using: str) -> bool:
    """Whether a hung worker's locked claim ends after LEASE_SECONDS (``_idle_timeout``):
    PostgreSQL and MariaDB. Elsewhere (MySQL, SQL Server) locked claims are not used."""
    connection = connections[using]
    return connection.vendor == "postgresql" or (
        connection.vendor == "mysql" and bool(getattr(connection, "mysql_is_mariadb", False)))


def _idle_timeout(using: str, seconds: float | None) -> None:
    """A worker that hangs while holding a locked claim loses it as it would lose a lease:
    the server ends a session idle in its transaction for ``seconds`` (None: back to the
    default once the rows have run). PostgreSQL: for this transaction only (SET LOCAL);
    MariaDB: for the session, so it is reset. Other databases: the locks last as long as
    the worker's connection."""
    connection = connections[using]
    if connection.vendor == "postgresql":
        if seconds is not None:
            with connection.cursor() as cursor:
                ms = int(seconds * 1000)
                cursor.execute(f"SET LOCAL idle_in_transaction_session_timeout = {ms}")
    elif connection.vendor == "mysql" and getattr(connection, "mysql_is_mariadb", False):
        value = "DEFAULT" if seconds is None else str(max(1, math.ceil(seconds)))
        try:
            with connection.cursor() as cursor:
                cursor.execute(f"SET SESSION idle_transaction_timeout = {value}")
        except (DatabaseError, InterfaceError):
            if seconds is not None:
                raise
            # The reset after the server ended the session: a new session starts clean.
