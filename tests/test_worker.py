"""The engine's guarantees, in-process: fan-out, exactly-once handler writes, retries and
dead letters, bad input, leases and their compare-and-set, hop limit, expiry."""

from __future__ import annotations

import json
import random
import threading
import uuid
from datetime import timedelta

import pytest
from django.db import connection, connections, transaction
from django.db.models import F
from django.db.models.functions import Now
from django.test import override_settings

from integration_events import publish
from integration_events.models import MessageStatus, PublishedMessage, ReceivedMessage
from integration_events.operations import reexecute_received, requeue_published
from integration_events.retry import RetryStrategy
from integration_events.signals import message_failed, message_retrying, message_succeeded
from integration_events.testing import deliver_pending, make_due
from integration_events.worker import Worker
from tests.conftest import claim_rows
from tests.eventapp.events import ChainLinked, LonelyHappened, ProbeHappened
from tests.eventapp.models import Delivery

pytestmark = pytest.mark.django_db

FAILED_CALLS: list[tuple[str, int]] = []


def record_failed(message) -> None:
    """FAILED_THRESHOLD_CALLBACK used by these tests."""
    FAILED_CALLS.append((str(message.pk), message.attempts))


@pytest.fixture
def failed_calls():
    FAILED_CALLS.clear()
    with override_settings(INTEGRATION_EVENTS={
        "MAX_ATTEMPTS": 3, "RETRY_BASE_DELAY": 0.5, "RETRY_MAX_DELAY": 5.0,
        "FAILED_THRESHOLD_CALLBACK": "tests.test_worker.record_failed",
    }):
        yield FAILED_CALLS


def test_two_groups_each_get_one_copy(worker: Worker) -> None:
    message = publish(ProbeHappened(n=1))
    stats = worker.run_until_idle()
    assert stats.dispatched == 1 and stats.succeeded == 2
    rows = ReceivedMessage.objects.filter(message=message).order_by("group")
    assert [(r.group, r.status, r.attempts) for r in rows] == [
        ("probe-a", "succeeded", 1), ("probe-b", "succeeded", 1)]
    assert sorted(Delivery.objects.values_list("group", flat=True)) == ["probe-a", "probe-b"]
    assert PublishedMessage.objects.get(pk=message.pk).status == MessageStatus.SUCCEEDED


def test_redispatch_creates_no_duplicate_inbox_rows(worker: Worker) -> None:
    message = publish(ProbeHappened(n=1))
    worker.dispatch_batch()
    # The fan-out is repeated (as after a crash between insert and status update).
    PublishedMessage.objects.filter(pk=message.pk).update(status=MessageStatus.PENDING)
    worker.dispatch_batch()
    assert ReceivedMessage.objects.filter(message=message).count() == 2


def test_redelivery_repeats_no_handler_writes(worker: Worker) -> None:
    message = publish(ProbeHappened(n=1))
    worker.run_until_idle()
    # Deliver again: the (message, group) inbox rows are unique and succeeded, so a second
    # dispatch adds nothing and a second pass runs nothing.
    PublishedMessage.objects.filter(pk=message.pk).update(status=MessageStatus.PENDING)
    worker.run_until_idle()
    assert Delivery.objects.count() == 2
    assert ReceivedMessage.objects.count() == 2


def test_failed_handler_rolls_back_its_writes(worker: Worker) -> None:
    publish(ProbeHappened(n=1, behaviour="fail:1", only_group="probe-a"))
    worker.run_until_idle()
    a = ReceivedMessage.objects.get(group="probe-a")
    assert a.status == MessageStatus.RETRYING
    assert "RuntimeError: probe 1 fails on attempt 1" in a.last_error
    assert "Traceback" in a.last_error
    # The failing attempt's Delivery row was rolled back with its transaction.
    assert list(Delivery.objects.values_list("group", "attempt")) == [("probe-b", 1)]
    make_due()
    worker.run_until_idle()
    a.refresh_from_db()
    assert (a.status, a.attempts) == (MessageStatus.SUCCEEDED, 2)
    assert sorted(Delivery.objects.values_list("group", "attempt")) == [
        ("probe-a", 2), ("probe-b", 1)]


def test_retries_back_off_exponentially_and_stop_at_the_limit(
    failed_calls, django_capture_on_commit_callbacks
) -> None:
    # A seeded RNG: the jittered delays are known exactly, whatever the clock does.
    worker = Worker(keep_leases=False, rng=random.Random(7))
    expected_rng = random.Random(7)
    strategy = RetryStrategy(max_attempts=3, base_delay=0.5, max_delay=5.0, jitter=0.5)
    publish(ProbeHappened(n=1, behaviour="fail", only_group="probe-a"))
    announced: list[float] = []

    def on_retrying(sender, message, error, retry_in, **kwargs) -> None:
        announced.append(retry_in)

    message_retrying.connect(on_retrying, weak=False)
    try:
        for attempt in (1, 2):
            with django_capture_on_commit_callbacks(execute=True):
                worker.run_until_idle()
            row = ReceivedMessage.objects.annotate(
                wait=F("next_attempt_at") - Now()).get(group="probe-a")
            assert (row.status, row.attempts) == (MessageStatus.RETRYING, attempt)
            # Stored as now + delay (database time): never later than the announced delay.
            assert row.wait.total_seconds() <= announced[-1]
            make_due()
    finally:
        message_retrying.disconnect(on_retrying)
    # base 0.5 s doubling, equal jitter: exactly what the same seed gives.
    assert announced == [strategy.delay(1, expected_rng), strategy.delay(2, expected_rng)]
    assert 0.25 <= announced[0] <= 0.5 and 0.5 <= announced[1] <= 1.0
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        worker.run_until_idle()
    assert callbacks, "the failed announcement waits for the commit"
    row = ReceivedMessage.objects.get(group="probe-a")
    assert (row.status, row.attempts) == (MessageStatus.FAILED, 3)
    assert row.expires_at is not None and row.finished_at is not None
    assert failed_calls == [(str(row.pk), 3)]
    make_due()
    assert worker.run_until_idle().total == 0, "a dead letter is not retried"


def test_signals_fire_once_per_transition(worker, failed_calls) -> None:
    events: list[tuple[str, str]] = []

    def on(name):
        def receiver(sender, message, **kwargs):
            events.append((name, getattr(message, "group", "")))
        return receiver

    receivers = {s: on(n) for s, n in ((message_succeeded, "succeeded"),
                                       (message_retrying, "retrying"),
                                       (message_failed, "failed"))}
    for signal, receiver in receivers.items():
        signal.connect(receiver)
    try:
        publish(ProbeHappened(n=1, behaviour="fail", only_group="probe-a"))
        deliver_pending(include_delayed=True)
        assert events.count(("succeeded", "probe-b")) == 1
        assert events.count(("retrying", "probe-a")) == 2
        assert events.count(("failed", "probe-a")) == 1
        assert len(failed_calls) == 1
        # A requeued message that fails again fires again.
        reexecute_received(ReceivedMessage.objects.filter(group="probe-a"))
        deliver_pending(include_delayed=True)
        assert events.count(("failed", "probe-a")) == 2
        assert len(failed_calls) == 2
    finally:
        for signal, receiver in receivers.items():
            signal.disconnect(receiver)


def test_per_subscriber_retry_policy(temp_subscriber, worker) -> None:
    calls = []

    @temp_subscriber(LonelyHappened.topic, group="fragile", max_attempts=1)
    def fragile(event: LonelyHappened) -> None:
        calls.append(event.n)
        raise ValueError("no second chance")

    publish(LonelyHappened(n=5))
    worker.run_until_idle()
    row = ReceivedMessage.objects.get(group="fragile")
    assert (row.status, row.attempts, calls) == (MessageStatus.FAILED, 1, [5])


def test_payload_that_fails_validation_fails_at_once(worker) -> None:
    message = publish(ProbeHappened(n=1))
    PublishedMessage.objects.filter(pk=message.pk).update(content=json.dumps({"n": "not-int"}))
    worker.run_until_idle()
    rows = ReceivedMessage.objects.filter(message=message)
    assert {r.status for r in rows} == {MessageStatus.FAILED}
    assert all(r.attempts == 1 for r in rows)
    assert all("InvalidMessage" in r.last_error and "ProbeHappened" in r.last_error
               and "n" in r.last_error for r in rows)
    assert Delivery.objects.count() == 0


def test_corrupt_json_fails_the_message_and_the_worker_goes_on(worker) -> None:
    bad = publish(ProbeHappened(n=1))
    good = publish(ProbeHappened(n=2))
    PublishedMessage.objects.filter(pk=bad.pk).update(content='{"n": 1,,, oops')
    worker.run_until_idle()
    bad.refresh_from_db()
    assert bad.status == MessageStatus.FAILED
    assert bad.last_error.startswith("InvalidMessage: content is not valid JSON")
    assert ReceivedMessage.objects.filter(message=good, status="succeeded").count() == 2


def test_unknown_topic_is_retried_then_failed(worker) -> None:
    message = PublishedMessage.objects.create(
        topic="probe.from-the-future", content="{}", correlation_id=uuid.uuid4())
    with override_settings(INTEGRATION_EVENTS={"UNKNOWN_TOPIC_MAX_ATTEMPTS": 3,
                                               "RETRY_BASE_DELAY": 0.1}):
        worker.run_until_idle()
        message.refresh_from_db()
        assert (message.status, message.attempts) == (MessageStatus.RETRYING, 1)
        assert "UnknownTopic" in message.last_error
        for _ in range(2):
            make_due()
            worker.run_until_idle()
    message.refresh_from_db()
    assert (message.status, message.attempts) == (MessageStatus.FAILED, 3)


def test_consumers_tolerate_added_and_defaulted_fields(worker) -> None:
    newer = publish(ProbeHappened(n=1))
    older = publish(ProbeHappened(n=2))
    # A newer producer added a field; an older one did not send a field that has a default.
    PublishedMessage.objects.filter(pk=newer.pk).update(
        content=json.dumps({"n": 1, "behaviour": "ok", "added_in_v2": {"x": 1}}))
    PublishedMessage.objects.filter(pk=older.pk).update(content=json.dumps({"n": 2}))
    worker.run_until_idle()
    assert ReceivedMessage.objects.filter(status="succeeded").count() == 4
    assert sorted(Delivery.objects.values_list("n", flat=True)) == [1, 1, 2, 2]


def test_known_topic_without_subscribers_is_marked_succeeded(worker) -> None:
    message = publish(LonelyHappened(n=1))
    worker.run_until_idle()
    message.refresh_from_db()
    assert message.status == MessageStatus.SUCCEEDED
    # Nothing to deliver is not an error: no last_error (the admin shows "no receipts").
    assert message.last_error == "" and not message.receipts.exists()


def test_hop_limit_stops_an_endless_chain(worker) -> None:
    with override_settings(INTEGRATION_EVENTS={"MAX_HOPS": 5}):
        first = publish(ChainLinked(depth=0))
        deliver_pending()
    chain = PublishedMessage.objects.filter(correlation_id=first.correlation_id)
    assert sorted(chain.values_list("correlation_sequence", flat=True)) == [0, 1, 2, 3, 4, 5]
    failed = ReceivedMessage.objects.get(status=MessageStatus.FAILED)
    assert failed.message.correlation_sequence == 5
    assert "HopLimitExceeded" in failed.last_error and "MAX_HOPS=5" in failed.last_error
    assert failed.attempts == 1, "a hop-limit failure is permanent, not retried"
    # Each link names its cause.
    for message in chain.exclude(pk=first.pk):
        assert PublishedMessage.objects.get(pk=message.causation_id).correlation_sequence == (
            message.correlation_sequence - 1)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("batch_size", [1, 20])
def test_expired_lease_cannot_complete_over_its_successor(
    temp_subscriber, worker, batch_size
) -> None:
    """Worker A's lease expires mid-handler and B takes the row over (committed, on its own
    connection): A's outcome and its handler's writes must be discarded."""
    if connection.vendor == "sqlite":
        pytest.skip("SQLite has one writer: no claim can be taken over mid-transaction")
    taken_over: list[uuid.UUID] = []

    def take_over(pk: int) -> None:
        try:
            token = uuid.uuid4()
            ReceivedMessage.objects.filter(pk=pk).update(lease_token=token)
            taken_over.append(token)
        finally:
            connections.close_all()

    @temp_subscriber(LonelyHappened.topic, group="slow")
    def slow(event: LonelyHappened, context) -> None:
        Delivery.objects.create(message_id=context.message_id, group="slow", n=event.n,
                                attempt=context.attempt)
        if not taken_over:
            row = ReceivedMessage.objects.get(group="slow")
            thread = threading.Thread(target=take_over, args=(row.pk,))
            thread.start()
            thread.join(timeout=10)

    publish(LonelyHappened(n=1))
    with override_settings(INTEGRATION_EVENTS={"EXECUTE_BATCH_SIZE": batch_size}):
        stats = worker.run_until_idle(max_passes=1)
    assert stats.lost == 1 and stats.succeeded == 0
    row = ReceivedMessage.objects.get(group="slow")
    assert (row.status, row.lease_token) == (MessageStatus.PROCESSING, taken_over[0]), (
        "the successor's claim is untouched")
    assert Delivery.objects.filter(group="slow").count() == 0, "A's writes were rolled back"


def test_crashing_handler_ends_up_failed_through_lease_expiry(
    worker, failed_calls, django_capture_on_commit_callbacks
) -> None:
    """A handler that kills its worker never reports back; attempts counted at claim time
    and the sweep's lease expiry still bring the row to the dead letter."""
    publish(ProbeHappened(n=1, only_group="probe-a"))
    worker.dispatch_batch()
    ReceivedMessage.objects.filter(group="probe-b").update(status=MessageStatus.SUCCEEDED)
    for _attempt in (1, 2, 3):
        make_due()
        (row,) = claim_rows(ReceivedMessage, 1, count_attempt=False)
        assert row.group == "probe-a"
        # The attempt is counted and committed, then the worker "dies" mid-handler.
        ReceivedMessage.objects.filter(pk=row.pk).update(attempts=F("attempts") + 1)
        ReceivedMessage.objects.filter(pk=row.pk).update(lease_until=Now() - timedelta(seconds=1))
        with django_capture_on_commit_callbacks(execute=True):
            swept = worker.sweep()
        assert swept.released + swept.dead == 1
    dead = ReceivedMessage.objects.get(status=MessageStatus.FAILED)
    assert dead.attempts == 3 and dead.last_error.startswith("LeaseExpired")
    assert failed_calls == [(str(dead.pk), 3)]


def test_claimed_but_unstarted_rows_lose_no_attempt(worker) -> None:
    publish(ProbeHappened(n=1))
    worker.dispatch_batch()
    rows = claim_rows(ReceivedMessage, 10, count_attempt=False)
    assert len(rows) == 2
    ReceivedMessage.objects.update(lease_until=Now() - timedelta(seconds=1))
    assert worker.sweep().released == 2
    assert set(ReceivedMessage.objects.values_list("status", "attempts")) == {("retrying", 0)}
    worker.run_until_idle()
    assert set(ReceivedMessage.objects.values_list("status", "attempts")) == {("succeeded", 1)}


def test_requeue_published_reruns_every_group(worker) -> None:
    message = publish(ProbeHappened(n=1))
    worker.run_until_idle()
    assert requeue_published([message]) == 1
    worker.run_until_idle()
    assert Delivery.objects.count() == 4
    assert set(ReceivedMessage.objects.values_list("status", "attempts")) == {("succeeded", 1)}


def test_processing_rows_are_not_requeued(worker) -> None:
    publish(ProbeHappened(n=1))
    worker.dispatch_batch()
    claim_rows(ReceivedMessage, 10, count_attempt=False)
    assert reexecute_received(ReceivedMessage.objects.all()) == 0


def test_non_atomic_handler(temp_subscriber, worker) -> None:
    outside = []

    @temp_subscriber(LonelyHappened.topic, group="webhook", atomic=False)
    def webhook(event: LonelyHappened) -> None:
        outside.append(event.n)

    publish(LonelyHappened(n=9))
    worker.run_until_idle()
    assert outside == [9]
    assert ReceivedMessage.objects.get(group="webhook").status == MessageStatus.SUCCEEDED


def test_base_exception_fails_only_its_message(worker) -> None:
    publish(ProbeHappened(n=1, behaviour="base", only_group="probe-a"))
    publish(ProbeHappened(n=2))
    worker.run_until_idle()
    row = ReceivedMessage.objects.get(group="probe-a", message__content__contains='"n":1')
    assert row.status == MessageStatus.RETRYING
    assert "ProbeBaseException" in row.last_error
    assert ReceivedMessage.objects.filter(status="succeeded").count() == 3


def test_stop_exception_is_recorded_and_reraised(worker) -> None:
    class Stop(SystemExit):
        pass

    publish(ProbeHappened(n=1, behaviour="sleep:0", only_group="probe-a"))
    publish(ProbeHappened(n=2))
    worker.dispatch_batch()
    from tests.eventapp import subscribers

    original = subscribers.behave

    def stop(event, context):
        if event.n == 1 and context.group == "probe-a":
            raise Stop("task timeout")

    subscribers.behave = stop
    try:
        with pytest.raises(Stop):
            worker.execute_batch()
    finally:
        subscribers.behave = original
    stopped = ReceivedMessage.objects.get(group="probe-a", message__content__contains='"n":1')
    assert stopped.status == MessageStatus.RETRYING and "Stop" in stopped.last_error
    # The rows not started yet went straight back to the queue, with no attempt used.
    assert not ReceivedMessage.objects.filter(status=MessageStatus.PROCESSING).exists()
    worker.run_until_idle()
    assert ReceivedMessage.objects.filter(status="succeeded").count() == 3


def test_sweep_deletes_only_expired_terminal_rows(worker) -> None:
    past = Now() - timedelta(seconds=1)
    for n in range(5):
        publish(ProbeHappened(n=n))
    worker.run_until_idle()
    messages = list(PublishedMessage.objects.order_by("created_at"))
    # 0: everything expired -> all deleted. 1: receipts expired, message not -> message kept.
    # 2: message expired but one receipt still retrying -> that receipt and message kept.
    # 3: nothing expired. 4: a pending receipt whose expires_at is (wrongly) past -> kept.
    PublishedMessage.objects.filter(pk__in=[messages[0].pk, messages[2].pk, messages[4].pk]
                                    ).update(expires_at=past)
    ReceivedMessage.objects.filter(message__in=messages[:3] + messages[4:]).update(
        expires_at=past)
    ReceivedMessage.objects.filter(message=messages[2], group="probe-a").update(
        status=MessageStatus.RETRYING)
    ReceivedMessage.objects.filter(message=messages[4], group="probe-a").update(
        status=MessageStatus.PENDING, next_attempt_at=Now() + timedelta(hours=1))
    stats = worker.sweep()
    assert stats.deleted_received == 2 + 2 + 1 + 1
    assert stats.deleted_published == 1
    left = set(PublishedMessage.objects.values_list("pk", flat=True))
    assert left == {m.pk for m in messages[1:]}
    assert set(ReceivedMessage.objects.values_list("message_id", "group")) == {
        (messages[2].pk, "probe-a"), (messages[3].pk, "probe-a"), (messages[3].pk, "probe-b"),
        (messages[4].pk, "probe-a")}


def test_handler_context_carries_correlation(worker) -> None:
    first = publish(ChainLinked(depth=0))
    with override_settings(INTEGRATION_EVENTS={"MAX_HOPS": 2}):
        deliver_pending()
    rows = list(Delivery.objects.order_by("correlation_sequence").values_list(
        "correlation_id", "correlation_sequence"))
    # Hops 0 and 1 ran; hop 2's handler hit MAX_HOPS=2 when publishing, so its write was
    # rolled back with the failure.
    assert rows == [(first.correlation_id, 0), (first.correlation_id, 1)]
    failed = ReceivedMessage.objects.get(status=MessageStatus.FAILED)
    assert failed.message.correlation_sequence == 2


def test_a_failing_group_does_not_starve_the_others(worker) -> None:
    for n in range(60):
        publish(ProbeHappened(n=n, behaviour="fail", only_group="probe-a"))
    first_pass = worker.run_once()
    second_pass = worker.run_once()
    assert first_pass.dispatched == 60
    # probe-a's failures back off; probe-b's copies are all delivered meanwhile.
    assert ReceivedMessage.objects.filter(group="probe-b", status="succeeded").count() == 60
    assert ReceivedMessage.objects.filter(group="probe-a", status="retrying").count() == 60
    assert first_pass.succeeded + second_pass.succeeded == 60


def test_run_writes_a_heartbeat(worker) -> None:
    from integration_events.models import WorkerNode

    publish(ProbeHappened(n=1))
    stats = worker.run(budget=0.5)
    assert stats.succeeded == 2
    node = WorkerNode.objects.get()
    assert node.processed == stats.total


def test_a_task_past_its_budget_starts_no_more_handlers(worker) -> None:
    publish(ProbeHappened(n=1))
    worker.dispatch_batch()
    # The budget ran out while the claim was being made.
    stats = worker.execute_batch(until=0.0)
    assert stats.total == 0 and Delivery.objects.count() == 0
    # Handed back at once, with no attempt used, for the next task to take.
    assert set(ReceivedMessage.objects.values_list("status", "attempts")) == {("retrying", 0)}
    assert worker.run_until_idle().succeeded == 2


def test_claims_name_the_node_and_the_worker_process(worker) -> None:
    import os

    from integration_events.nodes import node_name

    publish(ProbeHappened(n=1))
    worker.dispatch_batch()
    (row, _) = claim_rows(ReceivedMessage, 10, count_attempt=False)
    assert row.claimed_by == f"{node_name()}/{os.getpid()}"


@pytest.mark.parametrize("optimistic", [True, False])
def test_a_failure_in_a_batch_loses_only_its_own_work(
    temp_subscriber, worker, django_capture_on_commit_callbacks, optimistic
) -> None:
    runs: list[int] = []
    sent: list[int] = []

    @temp_subscriber(LonelyHappened.topic, group="batch")
    def handle(event: LonelyHappened, context) -> None:
        runs.append(event.n)
        Delivery.objects.create(message_id=context.message_id, group="batch", n=event.n,
                                attempt=context.attempt)
        transaction.on_commit(lambda: sent.append(event.n))
        if event.n == 3:
            raise RuntimeError("three is unlucky")

    for n in range(1, 6):
        publish(LonelyHappened(n=n))
    with override_settings(INTEGRATION_EVENTS={"EXECUTE_OPTIMISTIC": optimistic}), \
            django_capture_on_commit_callbacks(execute=True):
        stats = worker.run_until_idle()
    assert (stats.succeeded, stats.retried) == (4, 1)
    assert sorted(Delivery.objects.values_list("n", flat=True)) == [1, 2, 4, 5]
    assert sorted(sent) == [1, 2, 4, 5], "side effects of the rolled-back run never fired"
    # The failing handler ran once. Optimistically, the handlers that ran before it in the
    # rolled-back batch ran again (with savepoints); with savepoints from the start, once each.
    assert runs.count(3) == 1
    assert all(runs.count(n) in ((1, 2) if optimistic else (1,)) for n in (1, 2, 4, 5))
