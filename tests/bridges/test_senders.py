"""A bridge's SENDERS (integration_events.extra_claimers): while its group has a backlog, a
worker task keeps that many claims of its rows in flight, the task's own and threads of the
group's own, so the next batch is claimed, loaded and encoded while the broker confirms the
one before. Where locked claims run (PostgreSQL, MariaDB). A real RabbitMQ, a real database
(transactions committed: the claimers have connections of their own), a plain-pika peer."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import pytest
from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.db.models.functions import Now
from django.test import override_settings

from integration_events import extra_claimers, publish_many
from integration_events.claims import locks_can_expire
from integration_events.extra_claimers import ExtraClaimers
from integration_events.instrumentation import Instrumentation
from integration_events.models import MessageStatus, ReceivedMessage
from integration_events.retry import RetryStrategy
from integration_events.worker import Worker
from tests.eventapp.events import LonelyHappened

from .conftest import drain

# dbspecific: MariaDB runs them too (the CI's MariaDB pass takes the locking tests).
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.dbspecific]
BATCH = 50
MESSAGES = 1000
ALONE: dict[str, Any] = {"SEND": [LonelyHappened.topic], "bind": ("#",), "BATCH_SIZE": BATCH}


@pytest.fixture(autouse=True)
def _locked_claims_run() -> None:
    # Asked of the server (MariaDB or MySQL), so inside a test, not at collection.
    if not connection.features.has_select_for_update_skip_locked \
            or not locks_can_expire("default"):
        pytest.skip("extra claimers run where locked claims do (PostgreSQL, MariaDB)")


@pytest.fixture(autouse=True)
def _no_backoff_left() -> Iterator[None]:
    extra_claimers._failed.clear()
    yield
    extra_claimers._failed.clear()


class BatchTimes(Instrumentation):
    """Which thread ran each batch of a bridge, from when to when; optionally a database
    error in the first batch an extra claimer starts (its claim is rolled back)."""

    lock = threading.Lock()
    seen: ClassVar[list[tuple[str, float, float, int]]] = []
    fail_extra: ClassVar[int] = 0  # how many extra claimers' batches fail

    @contextmanager
    def batch(self, group: str, deliveries: Any, results: Any) -> Iterator[None]:
        name = threading.current_thread().name
        if BatchTimes.fail_extra and name.startswith("integration-events-claimer"):
            BatchTimes.fail_extra -= 1
            raise DatabaseError("injected: the extra claimer's connection broke")
        started = time.monotonic()
        yield
        with BatchTimes.lock:
            BatchTimes.seen.append((name, started, time.monotonic(), len(deliveries)))


@contextmanager
def timing() -> Iterator[None]:
    """BatchTimes as the only instrument and a short IDLE_LINGER (the bridges as set)."""
    BatchTimes.seen, BatchTimes.fail_extra = [], 0
    try:
        with override_settings(INTEGRATION_EVENTS={
                **settings.INTEGRATION_EVENTS,
                "INSTRUMENTATION": [f"{__name__}.BatchTimes"], "IDLE_LINGER": 0.2}):
            yield
    finally:
        BatchTimes.fail_extra = 0


def dispatched(count: int) -> Worker:
    publish_many([LonelyHappened(n=n) for n in range(count)])
    worker = Worker(keep_leases=False)
    while worker.dispatch_batch().total:
        pass
    return worker


def overlapping(seen: list[tuple[str, float, float, int]]) -> int:
    """Pairs of batches of different threads that ran at the same time."""
    return sum(1 for i, (a, s1, e1, _) in enumerate(seen) for (b, s2, e2, _) in seen[i + 1:]
               if a != b and s1 < e2 and s2 < e1)


# Everything was confirmed before the peer looks, a duplicate too: a short quiet is enough.
QUIET = 0.3


def sent_once(peer: Any, queue: str, count: int) -> None:
    got = drain(peer, queue, expect=count + 1, timeout=QUIET)
    ids = [properties.headers["cap-msg-id"] for _, properties, _ in got]
    assert len(ids) == count and len(set(ids)) == count


def everything_succeeded_once(group: str, count: int) -> None:
    rows = ReceivedMessage.objects.filter(group=group)
    assert rows.count() == count
    assert set(rows.values_list("status", "attempts")) == {(MessageStatus.SUCCEEDED, 1)}


@pytest.mark.parametrize("entry", ["run_until_idle", "run"])
@pytest.mark.parametrize("senders", [2, 1])
def test_a_backlog_goes_out_with_senders_claims_in_flight(
        bridged: Callable[..., Any], peer: Any, senders: int, entry: str) -> None:
    out = bridged(**ALONE, SENDERS=senders)
    with timing():
        worker = dispatched(MESSAGES)
        stats = worker.run_until_idle() if entry == "run_until_idle" else worker.run(budget=60)
    # The task's figures count the extra claimers' rows too.
    assert stats.succeeded == MESSAGES
    everything_succeeded_once(out.group, MESSAGES)
    sent_once(peer, out.queue, MESSAGES)
    threads = {name for name, *_ in BatchTimes.seen}
    assert sum(n for *_, n in BatchTimes.seen) == MESSAGES
    if senders == 1:
        assert threads == {threading.current_thread().name}
    else:
        assert threading.current_thread().name in threads and len(threads) == 2, threads
        # Two claims were in flight at once: batches of the two threads overlapped.
        assert overlapping(BatchTimes.seen) >= 1, BatchTimes.seen


def test_no_extra_claimer_inside_a_callers_transaction(
        bridged: Callable[..., Any], peer: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # Other connections would not see the transaction's rows (a test's, deliver_pending's).
    # A claimer started there would find nothing and end unseen by the batch hook: the
    # offers the task makes are what shows it (the real offer still runs).
    offers: list[set[str]] = []
    real_offer = ExtraClaimers.offer

    def offer(self: ExtraClaimers, backlogged: Any, wanted: Any) -> None:
        offers.append(set(backlogged))
        real_offer(self, backlogged, wanted)

    monkeypatch.setattr(ExtraClaimers, "offer", offer)
    out = bridged(**ALONE)
    with timing(), transaction.atomic():
        worker = dispatched(300)
        assert worker.run_until_idle().succeeded == 300
    assert {name for name, *_ in BatchTimes.seen} == {threading.current_thread().name}
    assert offers == []
    everything_succeeded_once(out.group, 300)
    sent_once(peer, out.queue, 300)


def test_a_group_whose_extra_claimer_keeps_failing_gets_none_for_a_while(
        bridged: Callable[..., Any], peer: Any, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(extra_claimers, "FAILURE_BACKOFF",
                        RetryStrategy(base_delay=30.0, max_delay=60.0, jitter=0.0))
    out = bridged(**ALONE)
    with timing(), caplog.at_level(logging.ERROR, "integration_events"):
        BatchTimes.fail_extra = 1000  # every extra claimer's batch fails
        stats = dispatched(MESSAGES).run_until_idle()
        failures = 1000 - BatchTimes.fail_extra
    # One failure, then no extra claimer for 30 s: the task's own thread sent the rest.
    failed = [r for r in caplog.records if "extra claimer failed" in r.getMessage()]
    assert len(failed) == 1 and failed[0].backoff == 30.0, caplog.text
    assert failures == 1
    assert 29 < extra_claimers.backing_off("default", out.group) <= 30
    assert stats.succeeded == MESSAGES
    everything_succeeded_once(out.group, MESSAGES)
    sent_once(peer, out.queue, MESSAGES)


def test_the_backoff_doubles_per_failure_in_a_row_and_a_claimer_that_ends_well_clears_it(
        ) -> None:
    key, waits = ("default", "g"), []
    for _ in range(8):
        waits.append(extra_claimers._failed_once_more(*key))
        # Claimers failing together (several SENDERS) count once: within the wait, no more.
        assert extra_claimers._failed_once_more(*key) <= waits[-1]
        count, _ = extra_claimers._failed[key]
        extra_claimers._failed[key] = (count, 0.0)  # the wait is over: the next one counts
    assert waits == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
    assert extra_claimers.backing_off("other", "g") == 0
    extra_claimers._ended_well("default", "g")
    assert extra_claimers.backing_off("default", "g") == 0
    assert extra_claimers._failed_once_more("default", "g") == 1.0


def test_an_extra_claimer_that_fails_ends_and_its_rows_go_out_with_the_others(
        bridged: Callable[..., Any], peer: Any, caplog: pytest.LogCaptureFixture) -> None:
    out = bridged(**ALONE)
    with timing(), caplog.at_level(logging.ERROR, "integration_events"):
        BatchTimes.fail_extra = 1
        worker = dispatched(MESSAGES)
        stats = worker.run_until_idle()
    assert not BatchTimes.fail_extra, "no extra claimer started"
    failed = [r for r in caplog.records if "extra claimer failed" in r.getMessage()]
    assert len(failed) == 1, caplog.text
    assert "injected" in str(failed[0].exc_info[1])
    # Its claim was rolled back before anything was sent: the rows went out once, later.
    assert stats.succeeded == MESSAGES
    everything_succeeded_once(out.group, MESSAGES)
    sent_once(peer, out.queue, MESSAGES)


class SlowBatches(BatchTimes):
    """BatchTimes whose batches take FIXED seconds plus PER_ROW seconds per row."""

    FIXED, PER_ROW = 0.0, 0.0

    @contextmanager
    def batch(self, group: str, deliveries: Any, results: Any) -> Iterator[None]:
        with super().batch(group, deliveries, results):
            time.sleep(SlowBatches.FIXED + SlowBatches.PER_ROW * len(deliveries))
            yield


@pytest.mark.parametrize(("fixed", "per_row"), [(0.0, 0.002), (0.1, 0.0)],
                         ids=["per-row", "per-batch"])
def test_a_slow_broker_still_gets_its_extra_claimer_when_fair_share_shrinks_its_claims(
        bridged: Callable[..., Any], peer: Any, monkeypatch: pytest.MonkeyPatch,
        fixed: float, per_row: float) -> None:
    # Batches of 50 taking 0.1 s: once FairShare knows it, a pass of EXECUTE_BATCH_SECONDS
    # 0.05 claims fewer rows than the claim size, and the claim is not full: a slow broker,
    # where a second claim in flight helps most.
    monkeypatch.setattr(SlowBatches, "FIXED", fixed)
    monkeypatch.setattr(SlowBatches, "PER_ROW", per_row)
    out = bridged(**ALONE)
    with override_settings(INTEGRATION_EVENTS={
            **settings.INTEGRATION_EVENTS, "EXECUTE_BATCH_SECONDS": 0.05,
            "INSTRUMENTATION": [f"{__name__}.SlowBatches"], "IDLE_LINGER": 0.2}):
        assert dispatched(BATCH).run_until_idle().succeeded == BATCH  # FairShare learns
        BatchTimes.seen, BatchTimes.fail_extra = [], 0
        stats = dispatched(400).run_until_idle()
    assert stats.succeeded == 400
    everything_succeeded_once(out.group, BATCH + 400)
    sent_once(peer, out.queue, BATCH + 400)
    mine = [n for name, *_, n in BatchTimes.seen if name == threading.current_thread().name]
    assert mine[0] < BATCH, BatchTimes.seen  # the claims did shrink
    assert len({name for name, *_ in BatchTimes.seen}) == 2, BatchTimes.seen
    if per_row:  # about EXECUTE_BATCH_SECONDS / PER_ROW rows each (once the few rows left
        # are all in hand, a claim takes them all: the tail's batches can be larger)
        assert sorted(mine)[len(mine) // 2] <= 30, BatchTimes.seen
    else:  # a smaller batch saves no time: once FairShare has seen that, full batches again
        assert BATCH in mine[1:], BatchTimes.seen


def claimer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("integration-events-claimer")]


def test_keyed_messages_go_out_in_their_keys_order_with_two_claims_in_flight(
        bridged: Callable[..., Any], peer: Any) -> None:
    # A key's next row is claimable once the row before it finished (in_turn): a row locked
    # by one claimer's open transaction is still pending to the other, which skips its key.
    out = bridged(**ALONE)
    keys = {f"key-{k}": range(k * 1000 + 1000, k * 1000 + 1030) for k in range(3)}
    with timing():
        for key, numbers in keys.items():
            publish_many([LonelyHappened(n=n) for n in numbers], ordering_key=key)
        worker = dispatched(400)  # unkeyed, newer: a backlog the extra claimer starts on
        stats = worker.run_until_idle()
    assert stats.succeeded == 490
    assert len({name for name, *_ in BatchTimes.seen}) == 2, BatchTimes.seen
    got = drain(peer, out.queue, expect=491, timeout=QUIET)
    assert len(got) == 490
    sent = [json.loads(body)["N"] for _, _, body in got]
    for numbers in keys.values():
        assert [n for n in sent if n in numbers] == list(numbers)


class StopInMain(BatchTimes):
    """The task's own thread is stopped (SIGTERM's exception, say) in its first batch after
    an extra claimer finished one."""

    armed: ClassVar[bool] = False

    @contextmanager
    def batch(self, group: str, deliveries: Any, results: Any) -> Iterator[None]:
        with super().batch(group, deliveries, results):
            mine = threading.current_thread() is threading.main_thread()
            if StopInMain.armed and mine and any(
                    name != threading.main_thread().name for name, *_ in BatchTimes.seen):
                StopInMain.armed = False
                raise KeyboardInterrupt
            yield


def test_a_stopped_task_waits_for_its_extra_claimers_batch_and_loses_nothing(
        bridged: Callable[..., Any], peer: Any) -> None:
    out = bridged(**ALONE)
    BatchTimes.seen, StopInMain.armed = [], True
    with override_settings(INTEGRATION_EVENTS={
            **settings.INTEGRATION_EVENTS, "INSTRUMENTATION": [f"{__name__}.StopInMain"]}):
        worker = dispatched(MESSAGES)
        with pytest.raises(KeyboardInterrupt):
            worker.run_until_idle()
        assert not StopInMain.armed, "the task was not stopped"
        # The claimers ended with the task, each after its batch: no claim is left open.
        assert claimer_threads() == []
        assert not ReceivedMessage.objects.filter(status=MessageStatus.PROCESSING).exists()
        done = ReceivedMessage.objects.filter(group=out.group, status=MessageStatus.SUCCEEDED)
        assert 0 < done.count() < MESSAGES
        # The stopped batch's rows are retried (now, not after their retry delay).
        ReceivedMessage.objects.filter(status=MessageStatus.RETRYING).update(
            next_attempt_at=Now())
        worker.run_until_idle()
    rows = ReceivedMessage.objects.filter(group=out.group)
    assert set(rows.values_list("status", flat=True)) == {MessageStatus.SUCCEEDED}
    got = drain(peer, out.queue, expect=2 * MESSAGES, timeout=QUIET)
    # At least once: the stopped batch's rows may go out again.
    assert len({p.headers["cap-msg-id"] for _, p, _ in got}) == MESSAGES


def test_a_task_whose_time_ends_mid_batch_waits_for_its_claimers_batches(
        bridged: Callable[..., Any], peer: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(SlowBatches, "FIXED", 0.25)
    out = bridged(**ALONE)
    BatchTimes.seen = []
    with override_settings(INTEGRATION_EVENTS={
            **settings.INTEGRATION_EVENTS, "INSTRUMENTATION": [f"{__name__}.SlowBatches"]}):
        worker = dispatched(MESSAGES)
        started = time.monotonic()
        stats = worker.run(budget=0.6)
    assert claimer_threads() == []
    assert len({name for name, *_ in BatchTimes.seen}) == 2, BatchTimes.seen
    # A batch that ran when the time was up finished, and counts in the task's figures.
    assert max(end for _, _, end, _ in BatchTimes.seen) > started + 0.6
    rows = ReceivedMessage.objects.filter(group=out.group)
    done = rows.filter(status=MessageStatus.SUCCEEDED)
    assert stats.succeeded == done.count() == sum(n for *_, n in BatchTimes.seen) < MESSAGES
    assert set(rows.exclude(status=MessageStatus.SUCCEEDED)
               .values_list("status", "attempts")) == {(MessageStatus.PENDING, 0)}
    sent_once(peer, out.queue, done.count())


def test_a_claimer_that_cannot_even_start_its_claim_ends_and_backs_off(
        caplog: pytest.LogCaptureFixture) -> None:
    from integration_events.instrumentation import Hooks

    def broken(group: str) -> Any:
        raise RuntimeError("injected: no strategy for the group")

    claimers = ExtraClaimers("default", "test", broken, Hooks(), clock=time.monotonic)
    with caplog.at_level(logging.ERROR, "integration_events"):
        claimers.offer({"g"}, {"g": 2})
        stats = claimers.close(stop=False)
    assert stats.total == 0 and not claimers.busy()  # it was counted out: nothing waits on it
    assert "extra claimer failed" in caplog.text and "injected" in caplog.text
    assert extra_claimers.backing_off("default", "g") > 0
    claimers = ExtraClaimers("default", "test", broken, Hooks(), clock=time.monotonic)
    claimers.offer({"g"}, {"g": 2})  # backing off: no thread
    assert not claimers.busy() and claimer_threads() == []
    claimers.close(stop=False)
