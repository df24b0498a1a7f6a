"""Flow control in-process: fair shares, the time budget per group, pause re-checks,
concurrency slots, rate grants, group limits from @subscriber, and the group command."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.db.models.functions import Now
from django.test import override_settings

from integration_events import operations, publish, publish_many
from integration_events.checks import check_topics
from integration_events.claims import claim
from integration_events.flow import FairShare, acquire_slot, grant, release_slot
from integration_events.models import (
    GroupSlot,
    GroupState,
    MessageStatus,
    RateGrant,
    ReceivedMessage,
)
from integration_events.registry import Rate, group_limits, parse_rate, subscriber, unregister
from integration_events.worker import Worker
from tests.eventapp.events import LonelyHappened, Paced, PacedFast, Pausable
from tests.eventapp.models import Run

pytestmark = pytest.mark.django_db


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_rates_parse_and_bad_ones_are_refused() -> None:
    assert parse_rate("10/s") == Rate(10, 1.0)
    assert parse_rate(" 600 / m") == Rate(600, 60.0)
    assert parse_rate("1000/h") == Rate(1000, 3600.0)
    assert str(parse_rate("20/s")) == "20/s"
    for bad in ("10", "0/s", "ten/s", "5/d", ""):
        with pytest.raises(ValueError, match="'10/s'"):
            parse_rate(bad)
    with pytest.raises(ImproperlyConfigured, match="rate_limit"):
        subscriber(LonelyHappened.topic, group="x", rate_limit="fast")
    with pytest.raises(ImproperlyConfigured, match="max_concurrency"):
        subscriber(LonelyHappened.topic, group="x", max_concurrency=0)


def test_group_limits_come_from_the_subscribers_and_must_agree() -> None:
    limits = group_limits()
    assert limits["limited"].max_concurrency == 2 and limits["rated"].rate_limit == Rate(20, 1)
    assert "paced-slow" not in limits

    def other(event: LonelyHappened) -> None: ...

    subscriber(LonelyHappened.topic, group="limited", max_concurrency=5)(other)
    try:
        errors = [e for e in check_topics() if e.id == "integration_events.E013"]
        assert len(errors) == 1 and "'limited'" in errors[0].msg
    finally:
        unregister(LonelyHappened.topic, "limited")


def backlog(slow: int, fast: int) -> None:
    publish_many([Paced(n=n) for n in range(slow)])
    publish_many([PacedFast(n=n) for n in range(fast)])
    Worker(keep_leases=False).dispatch_batch(limit=slow + fast)


def test_a_backlog_is_shared_by_time_and_fast_groups_go_first() -> None:
    backlog(slow=150, fast=5)
    strategy = FairShare(clock=Clock())
    strategy.cost = {"paced-slow": 0.2, "paced-fast": 0.001}
    with override_settings(INTEGRATION_EVENTS={"EXECUTE_BATCH_SECONDS": 1.0}):
        taken = claim(ReceivedMessage, "default", 100, "test", strategy, count_attempt=False)
    groups = [r.group for r in taken]
    # 1 s of work each: 5 slow rows (0.2 s each) and all 5 fast ones, the fast group first;
    # with oldest first, 100 slow rows would have been taken and no fast one.
    assert groups == ["paced-fast"] * 5 + ["paced-slow"] * 5


def test_without_a_backlog_everything_due_is_taken() -> None:
    backlog(slow=30, fast=5)
    strategy = FairShare(clock=Clock())
    strategy.cost = {"paced-slow": 0.2, "paced-fast": 0.001}
    taken = claim(ReceivedMessage, "default", 100, "test", strategy, count_attempt=False)
    assert len(taken) == 35 and taken.rows[0].group == "paced-fast"


def test_the_compiled_group_lookup_runs_with_each_groups_name_and_limit() -> None:
    # One statement, compiled once with stand-ins, serves every group and every limit.
    backlog(slow=6, fast=4)
    pending = MessageStatus.PENDING
    lookups = [(group, limit) for limit in (2, 5, 9) for group in ("paced-slow", "paced-fast")]
    found = {(group, limit): ReceivedMessage.objects.due_rows(
        pending, limit, ("pk", "group"), skip_locked=False, group=group)
        for group, limit in lookups}
    for (group, limit), rows in found.items():
        assert {g for _pk, g in rows} == {group}
        assert len(rows) == min(limit, 6 if group == "paced-slow" else 4)


def test_a_group_that_used_its_time_in_a_pass_gives_the_rest_back() -> None:
    clock = Clock()
    strategy = FairShare(clock=clock)
    backlog(slow=4, fast=0)
    worker = Worker(keep_leases=False, strategy=strategy, clock=clock)

    original = strategy.observe

    def slow_handler_time(group: str, seconds: float, count: int = 1, *,
                          batch: bool = False) -> None:
        original(group, 0.6 * count, count, batch=batch)  # each run "takes" 0.6 s

    strategy.observe = slow_handler_time  # type: ignore[method-assign]
    with override_settings(INTEGRATION_EVENTS={"EXECUTE_BATCH_SECONDS": 1.0,
                                               "EXECUTE_BATCH_SIZE": 1}):
        stats = worker.execute_batch()
    # Two runs (1.2 s) use up the group's second; the other two go back unstarted.
    assert stats.succeeded == 2 and Run.objects.count() == 2
    back = ReceivedMessage.objects.exclude(status=MessageStatus.SUCCEEDED)
    assert set(back.values_list("status", "attempts")) == {(MessageStatus.RETRYING, 0)}


def test_a_pause_is_seen_by_claims_and_rechecked_before_each_unit() -> None:
    clock = Clock()
    strategy = FairShare(clock=clock)
    publish_many([Pausable(n=n) for n in range(3)])
    worker = Worker(keep_leases=False, strategy=strategy, clock=clock)
    worker.dispatch_batch()
    taken = claim(ReceivedMessage, "default", 10, "test", strategy, count_attempt=False)
    assert len(taken) == 3
    assert operations.pause_group("pausable") is True
    assert operations.pause_group("pausable") is False, "paused already"
    with override_settings(INTEGRATION_EVENTS={"POLL_INTERVAL": 0.5}):
        # Within a poll interval of the claim, the claim's own view holds...
        with strategy.admit(taken, taken.rows[:1]) as rows:
            assert rows == taken.rows[:1]
        clock.now += 0.5
        # ...after it, the pause is read again and nothing more starts.
        with strategy.admit(taken, taken.rows[1:]) as rows:
            assert rows == []
    taken.hand_back_unstarted()
    # Claims skip a paused group; its backlog stays.
    assert worker.execute_batch().total == 0
    assert ReceivedMessage.objects.filter(group="pausable").exclude(
        status=MessageStatus.SUCCEEDED).count() == 3
    assert operations.resume_group("pausable") is True
    assert operations.resume_group("pausable") is False
    assert worker.run_until_idle().succeeded == 3


def test_concurrency_slots_are_taken_released_and_expire() -> None:
    a = acquire_slot("default", "limited", 2, "holder-a")
    b = acquire_slot("default", "limited", 2, "holder-b")
    assert a is not None and b is not None and a != b
    assert acquire_slot("default", "limited", 2, "holder-c") is None, "both slots held"
    release_slot("default", a, "holder-x")  # not the holder: nothing happens
    assert acquire_slot("default", "limited", 2, "holder-c") is None
    release_slot("default", a, "holder-a")
    c = acquire_slot("default", "limited", 2, "holder-c")
    assert c == a
    # A holder that died: its lease expires and the slot is free again.
    GroupSlot.objects.filter(pk=b).update(lease_until=Now() - timedelta(seconds=1))
    assert acquire_slot("default", "limited", 2, "holder-d") == b
    assert GroupSlot.objects.filter(group="limited").count() == 2


def test_the_lease_keeper_renews_the_slots_its_claims_hold() -> None:
    """A unit's slot is leased under its claim's token and renewed with its rows: a handler
    that runs longer than LEASE_SECONDS keeps its slot (no extra run elsewhere)."""
    import uuid

    from integration_events.leases import LeaseKeeper

    token, other = uuid.uuid4(), uuid.uuid4()
    mine = acquire_slot("default", "limited", 2, str(token))
    theirs = acquire_slot("default", "limited", 2, str(other))
    assert mine is not None and theirs is not None
    # Both nearly expired; the keeper holds only our token.
    GroupSlot.objects.update(lease_until=Now() + timedelta(seconds=1))
    before = {s.pk: s.lease_until for s in GroupSlot.objects.all()}
    keeper = LeaseKeeper("default", 300)
    with keeper.holding(token):
        keeper.renew()
    after = {s.pk: s.lease_until for s in GroupSlot.objects.all()}
    assert after[mine] > before[mine] + timedelta(seconds=200), "renewed for the lease"
    assert after[theirs] == before[theirs], "another claim's slot is not ours to renew"
    # Past the other slot's old lease, ours is still held: no third start for the group.
    GroupSlot.objects.filter(pk=theirs).update(lease_until=Now() - timedelta(seconds=1))
    assert acquire_slot("default", "limited", 2, "holder-c") == theirs
    assert acquire_slot("default", "limited", 2, "holder-d") is None


def test_rows_of_a_group_at_its_concurrency_limit_are_not_claimed() -> None:
    from tests.eventapp.events import Limited

    publish_many([Limited(n=n) for n in range(3)])
    worker = Worker(keep_leases=False, strategy=FairShare())
    worker.dispatch_batch()
    held = [acquire_slot("default", "limited", 2, f"other-{i}") for i in range(2)]
    assert worker.execute_batch().total == 0
    release_slot("default", held[0], "other-0")
    stats = worker.execute_batch()
    assert stats.succeeded == 3 and Run.objects.filter(group="limited").count() == 3
    assert GroupSlot.objects.filter(holder="").count() == 1, "the unit's slot was released"


def test_rate_grants_hold_the_window() -> None:
    rate = Rate(3, 60.0)
    assert [grant("default", "rated", rate, max_wait=0) for _ in range(4)] == [
        True, True, True, False]
    assert RateGrant.objects.filter(group="rated").count() == 3
    # The oldest grant leaves the window: one more start.
    oldest = RateGrant.objects.filter(group="rated").order_by("granted_at").first()
    RateGrant.objects.filter(pk=oldest.pk).update(granted_at=Now() - timedelta(seconds=61))
    assert grant("default", "rated", rate, max_wait=0) is True


def test_the_group_command(capsys) -> None:
    out = StringIO()
    call_command("integration_events_group", "pause", "pausable", stdout=out)
    assert "group pausable paused" in out.getvalue()
    assert GroupState.objects.get(group="pausable").paused
    out = StringIO()
    publish(Pausable(n=1))
    Worker(keep_leases=False).dispatch_batch()
    call_command("integration_events_group", "status", stdout=out)
    assert "pausable: 1 waiting (paused)" in out.getvalue()
    assert "limited: 0 waiting (max_concurrency=2)" in out.getvalue()
    call_command("integration_events_group", "resume", "pausable", stdout=out)
    assert not GroupState.objects.get(group="pausable").paused
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="no group 'nope' here"):
        call_command("integration_events_group", "pause", "nope")


def test_an_idle_task_does_not_spin_on_a_paused_groups_backlog() -> None:
    """The paused group's rows are due but cannot be claimed: the task must linger and end,
    not poll every 20 ms for its whole budget (next_due_in leaves held-back groups out)."""
    from tests.test_seams import FakeClock

    publish_many([Pausable(n=n) for n in range(3)])
    Worker(keep_leases=False).dispatch_batch()
    operations.pause_group("pausable")
    clock = FakeClock()
    waits: list[float] = []

    class AdvancingWaiter:
        def wait(self, alias: str, seconds: float) -> None:
            waits.append(seconds)
            clock.now += seconds

    with override_settings(INTEGRATION_EVENTS={"IDLE_LINGER": 1.0, "POLL_INTERVAL": 0.25}):
        worker = Worker(keep_leases=False, waiter=AdvancingWaiter(), clock=clock)
        assert worker.next_due_in() is None, "nothing claimable is waiting"
        worker.run(budget=60)
    assert waits == [0.25] * 4


def test_a_backing_off_group_is_due_when_its_backoff_ends() -> None:
    publish(Pausable(n=1))
    Worker(keep_leases=False).dispatch_batch()
    GroupState.objects.create(group="pausable", backoff_until=Now() + timedelta(seconds=30))
    due = Worker(keep_leases=False).next_due_in()
    assert due is not None and 25 < due <= 30


# --- a batch group with a claim size of its own (a broker bridge's BATCH_SIZE) ---------------

SIZED = "sized:test"


class SizedResolver:
    """A run-time batch group, SIZED, for every LonelyHappened, claiming 30 rows at once."""

    def __init__(self, size: int = 30) -> None:
        from integration_events.registry import Subscription

        self.sub = Subscription(
            topic=LonelyHappened.topic, group=SIZED, handler=self.handle, event_type=None,
            wants_context=False, atomic=False, topic_was_constant=True,
            batch_handler=self.handle, raw=True, claim_size=size)

    def handle(self, deliveries: list) -> list:
        return [None] * len(deliveries)

    def groups_for(self, message):
        return {SIZED: self.sub} if message.topic == LonelyHappened.topic else {}

    def get(self, topic, group):
        return self.sub if group == SIZED and topic == LonelyHappened.topic else None

    def declared(self):
        return [self.sub]


@pytest.fixture
def sized():
    from integration_events.registry import register_resolver, unregister_resolver

    resolver = SizedResolver()
    register_resolver(resolver)
    yield resolver
    unregister_resolver(resolver)


def lockable(group: str) -> int:
    """Rows of ``group`` another connection could lock now (SKIP LOCKED skips the others)."""
    from django.db import connection

    other = connection.copy()
    try:
        with other.cursor() as cursor:
            table = other.ops.quote_name(ReceivedMessage._meta.db_table)
            cursor.execute(f"SELECT id FROM {table} WHERE {other.ops.quote_name('group')} = %s "
                           "FOR UPDATE SKIP LOCKED", [group])
            return len(cursor.fetchall())
    finally:
        other.close()


@pytest.mark.django_db(transaction=True)
def test_a_sized_group_claims_its_size_and_locks_no_row_it_does_not_take(sized) -> None:
    from django.db import connection

    if not connection.features.has_select_for_update_skip_locked:
        pytest.skip("row locks: PostgreSQL, MariaDB")
    publish_many([LonelyHappened(n=n) for n in range(60)])
    Worker(keep_leases=False).dispatch_batch()
    # Two of the sized group's rows are due retries, so the window (read first) has them.
    retried = list(ReceivedMessage.objects.filter(group=SIZED).order_by("-id")
                   .values_list("pk", flat=True)[:2])
    ReceivedMessage.objects.filter(pk__in=retried).update(status=MessageStatus.RETRYING)
    seen: dict[str, int] = {}

    def run(rows: list) -> None:
        seen["taken"], seen["locked"] = len(rows), 60 - lockable(SIZED)

    claim(ReceivedMessage, "default", 5, "test", FairShare(clock=Clock()),
          count_attempt=False, locked=(frozenset({SIZED}), run))
    assert seen == {"taken": 30, "locked": 30}


def claim_in_a_small_statement(monkeypatch) -> tuple[FairShare, list]:
    """A FairShare claim of 5 rows where one statement holds 5 + 12: room for 12 of the sized
    group beside them."""
    from integration_events import flow

    monkeypatch.setattr(flow, "MAX_ROWS_PER_STATEMENT", 5 + 12)
    strategy = FairShare(clock=Clock())
    return strategy, list(claim(ReceivedMessage, "default", 5, "test", strategy,
                                count_attempt=False))


def test_the_sized_groups_add_at_most_what_one_in_list_holds(sized, monkeypatch) -> None:
    publish_many([LonelyHappened(n=n) for n in range(40)])
    Worker(keep_leases=False).dispatch_batch()
    strategy, taken = claim_in_a_small_statement(monkeypatch)
    assert sum(1 for r in taken if r.group == SIZED) == 12
    assert strategy.left_behind(SIZED, 12)  # the statement's room cut it short


@pytest.mark.django_db(transaction=True)
def test_left_behind_names_the_groups_a_claim_gave_all_it_could(sized) -> None:
    # The backlog signal extra claimers start on (integration_events.extra_claimers).
    publish_many([LonelyHappened(n=n) for n in range(45)])
    Worker(keep_leases=False).dispatch_batch()
    strategy = FairShare(clock=Clock())
    taken = claim(ReceivedMessage, "default", 5, "test", strategy, count_attempt=False)
    mine = sum(1 for r in taken if r.group == SIZED)
    assert mine == 30 and strategy.left_behind(SIZED, mine)
    # A group-only strategy (an extra claimer's) takes the rest: 15 of up to 30, none left.
    one = strategy.for_group(SIZED)
    rest = claim(ReceivedMessage, "default", 30, "test", one, count_attempt=False)
    assert {r.group for r in rest} == {SIZED} and len(rest) == 15
    assert not one.left_behind(SIZED, len(rest))
    # Once the group's rows cost more than a pass's time, its share is smaller than its size,
    # and a claim that took that share left rows behind too.
    strategy.observe(SIZED, 2.0, 30, batch=True)  # 1 s budget: 15 rows a pass
    assert strategy.share(SIZED, 30) == 15


def test_a_fixed_cost_per_batch_does_not_shrink_a_batch_groups_claims() -> None:
    group, budget = "bridge:slow", 1.0  # the default EXECUTE_BATCH_SECONDS
    fixed = FairShare(clock=Clock())  # 2 s a batch, whatever its size (a slow confirm)
    fixed.observe(group, 2.0, 50, batch=True)
    assert fixed.share(group, 50) == 25  # one size seen: the time is taken as per row
    fixed.observe(group, 2.0, 25, batch=True)
    assert fixed.share(group, 50) == 50  # a smaller batch saves nothing: the whole size
    per_row = FairShare(clock=Clock())  # 40 ms a row
    per_row.observe(group, 2.0, 50, batch=True)
    per_row.observe(group, 1.0, 25, batch=True)
    assert per_row.share(group, 50) == 25
    both = FairShare(clock=Clock())  # 200 ms a batch + 10 ms a row: (1 - 0.2) / 0.01 rows
    both.observe(group, 0.7, 50, batch=True)
    both.observe(group, 0.5, 30, batch=True)
    assert both.share(group, 200) == pytest.approx(80, abs=1)
    assert both.current.budget == budget
    # Just under the budget, the fixed part does not shrink the batch to a row: never so
    # few rows that it is more than half of a batch's time (0.99 s -> 99 rows of 10 ms).
    near = FairShare(clock=Clock())
    near.observe(group, 0.99 + 0.5, 50, batch=True)
    near.observe(group, 0.99 + 0.3, 30, batch=True)
    assert near.share(group, 200) == pytest.approx(99, abs=1)
    assert near.share(group, 50) == 50


def test_a_strategy_with_its_own_select_gets_extra_claimers_only_if_it_says_how() -> None:
    from integration_events.claims import OldestFirst

    class Mine(OldestFirst):
        def select(self, qs, limit, *, skip_locked):  # type: ignore[no-untyped-def]
            return []

    class Complete(Mine):
        def for_group(self, group: str) -> Complete:
            return self

        def left_behind(self, group: str, taken: int) -> bool:
            return False

    assert Mine().for_group is None and Mine().left_behind is None
    assert callable(Complete().for_group) and callable(Complete().left_behind)
    assert callable(FairShare().for_group) and callable(FairShare().left_behind)
    assert callable(OldestFirst().for_group)


def test_oldest_first_takes_a_full_claim_for_a_backlog_only_of_the_groups_that_filled_it(
        sized) -> None:
    from integration_events.claims import OldestFirst

    publish_many([LonelyHappened(n=n) for n in range(3)])  # 3 rows of the sized group
    publish_many([Paced(n=n) for n in range(20)])  # then 20 of another
    Worker(keep_leases=False).dispatch_batch(limit=50)
    strategy = OldestFirst()
    taken = claim(ReceivedMessage, "default", 10, "test", strategy, count_attempt=False)
    mine = sum(1 for r in taken if r.group == SIZED)
    assert len(taken) == 10 and mine == 3
    # Full, but the sized group had 3 of 10 (not the claim, nor its size): no backlog of it.
    assert not strategy.left_behind(SIZED, mine)
    assert not strategy.left_behind("paced-slow", 7)  # 7 of 10 either
    one = strategy.for_group(SIZED)
    assert not one.left_behind(SIZED, 0)  # its own claim has not run yet in this thread
    publish_many([LonelyHappened(n=n) for n in range(20)])
    Worker(keep_leases=False).dispatch_batch(limit=50)
    rest = claim(ReceivedMessage, "default", 10, "test", one, count_attempt=False)
    assert {r.group for r in rest} == {SIZED} and one.left_behind(SIZED, len(rest))


def test_a_sized_group_with_all_its_rows_in_hand_is_not_cut_short(sized, monkeypatch) -> None:
    # The statement's room ran out (spare 0) only after the group had all its due rows.
    publish_many([LonelyHappened(n=n) for n in range(8)])
    backlog(slow=10, fast=0)
    strategy, taken = claim_in_a_small_statement(monkeypatch)  # room for 12: it has 8
    assert sum(1 for r in taken if r.group == SIZED) == 8
    assert not strategy.left_behind(SIZED, 8)
