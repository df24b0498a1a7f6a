"""Each extension point of the engine, proven by a second, test-only implementation: the claim
strategy, the idle waiter, the pump, group resolution (with a batch handler) and the
instrumentation hooks."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import pytest
from django.test import override_settings

from integration_events import publish, publish_many
from integration_events.claims import OldestFirst
from integration_events.context import Delivery
from integration_events.instrumentation import Hooks, Instrumentation
from integration_events.models import MessageStatus, PublishedMessage, ReceivedMessage
from integration_events.outcomes import Outcome
from integration_events.registry import (
    Subscription,
    register_resolver,
    unregister_resolver,
)
from integration_events.worker import Worker
from tests.eventapp.events import LonelyHappened, ProbeHappened
from tests.eventapp.models import Delivery as DeliveryRow

pytestmark = pytest.mark.django_db


# --- claim strategy ------------------------------------------------------------------------


class OneGroupOnly(OldestFirst):
    """Claims only one group's rows, and records what it was asked to admit and run."""

    def __init__(self, group: str) -> None:
        self.group = group
        self.admitted: list[list[str]] = []
        self.ran: list[str] = []

    def select(self, qs: Any, limit: int, *, skip_locked: bool) -> list[Any]:
        return super().select(qs.filter(group=self.group), limit, skip_locked=skip_locked)

    def admit(self, claim: Any, rows: list[ReceivedMessage]
              ) -> AbstractContextManager[list[ReceivedMessage]]:
        self.admitted.append([r.group for r in rows])
        return nullcontext(rows[:1])  # one row of the unit may start; the others go back

    def running(self, row: ReceivedMessage) -> AbstractContextManager[None]:
        self.ran.append(row.group)
        return nullcontext()


def test_a_claim_strategy_decides_what_runs() -> None:
    publish_many([ProbeHappened(n=n) for n in range(3)])
    strategy = OneGroupOnly("probe-b")
    worker = Worker(keep_leases=False, strategy=strategy)
    worker.dispatch_batch()
    stats = worker.execute_batch()
    assert stats.succeeded == 1, "admit let one row of the chunk start"
    assert strategy.admitted == [["probe-b"] * 3] and strategy.ran == ["probe-b"]
    assert set(ReceivedMessage.objects.filter(group="probe-a").values_list(
        "status", flat=True)) == {MessageStatus.PENDING}, "probe-a was never claimed"
    # The two rows not admitted went back at once, without losing an attempt.
    assert set(ReceivedMessage.objects.filter(group="probe-b").exclude(
        status=MessageStatus.SUCCEEDED).values_list("status", "attempts")) == {("retrying", 0)}


def test_claim_strategy_from_settings() -> None:
    with override_settings(INTEGRATION_EVENTS={
            "CLAIM_STRATEGY": "tests.test_seams.OnlyProbeA"}):
        worker = Worker(keep_leases=False)
    assert isinstance(worker.strategy, OnlyProbeA)


class OnlyProbeA(OneGroupOnly):
    def __init__(self) -> None:
        super().__init__("probe-a")


# --- idle waiter and pump --------------------------------------------------------------------


class RecordingWaiter:
    def __init__(self) -> None:
        self.waits: list[tuple[str, float]] = []

    def wait(self, alias: str, seconds: float) -> None:
        self.waits.append((alias, seconds))


class RecordingPump:
    def __init__(self) -> None:
        self.enqueued: list[str] = []
        self.recruited: list[str] = []

    def enqueue_process(self, alias: str) -> None:
        self.enqueued.append(alias)

    def recruit(self, alias: str) -> bool:
        self.recruited.append(alias)
        return True

    def queue_size(self) -> int | None:
        return 0


class FakeClock:
    """Advances only when the waiter waits: the loop's timing, without sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_idle_task_waits_through_its_waiter_and_ends_after_lingering() -> None:
    clock = FakeClock()
    waiter = RecordingWaiter()

    class AdvancingWaiter:
        def wait(self, alias: str, seconds: float) -> None:
            waiter.wait(alias, seconds)
            clock.now += seconds

    with override_settings(INTEGRATION_EVENTS={"IDLE_LINGER": 1.0, "POLL_INTERVAL": 0.25}):
        worker = Worker(keep_leases=False, waiter=AdvancingWaiter(), clock=clock)
        stats = worker.run(budget=60)
    assert stats.total == 0
    assert waiter.waits == [("default", 0.25)] * 4, "it lingered IDLE_LINGER, polling"


def test_recruits_through_its_pump_when_a_claim_comes_back_full() -> None:
    pump = RecordingPump()
    publish_many([LonelyHappened(n=n) for n in range(5)])
    with override_settings(INTEGRATION_EVENTS={"NUDGE": True}):
        worker = Worker(keep_leases=False, pump=pump)
        worker.dispatch_batch(limit=5)
        worker.dispatch_batch(limit=5)  # nothing left: not full, no recruit
    assert pump.recruited == ["default"]


def test_hands_on_through_its_pump_when_work_is_due_soon() -> None:
    pump = RecordingPump()
    clock = FakeClock()

    class AdvancingWaiter:
        def wait(self, alias: str, seconds: float) -> None:
            clock.now += seconds

    publish(ProbeHappened(n=1), delay=30)  # due in 30 s: after the budget, within the horizon
    with override_settings(INTEGRATION_EVENTS={"NUDGE": True, "WAKE_HORIZON": 120}):
        Worker(keep_leases=False, pump=pump, waiter=AdvancingWaiter(), clock=clock).run(budget=5)
    assert pump.enqueued == ["default"]


# --- group resolution with a batch handler ---------------------------------------------------


class EchoResolver:
    """A run-time group, "echo:test", for every ProbeHappened: a batch handler that fails the
    deliveries whose n is odd."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.sub = Subscription(
            topic=ProbeHappened.topic, group="echo:test", handler=self.handle_batch,
            event_type=None, wants_context=True, atomic=False, topic_was_constant=True,
            batch_handler=self.handle_batch, raw=True,
        )

    def handle_batch(self, deliveries: Sequence[Delivery]) -> list[BaseException | None]:
        ns = [int(d.message.content.split('"n":')[1].split(",")[0]) for d in deliveries]
        self.batches.append(ns)
        return [RuntimeError(f"odd {n}") if n % 2 else None for n in ns]

    def groups_for(self, message: PublishedMessage) -> Mapping[str, Subscription]:
        return {"echo:test": self.sub} if message.topic == ProbeHappened.topic else {}

    def get(self, topic: str, group: str) -> Subscription | None:
        return self.sub if group == "echo:test" and topic == ProbeHappened.topic else None

    def declared(self) -> Sequence[Subscription]:
        return [self.sub]


@pytest.fixture
def echo() -> Iterator[EchoResolver]:
    resolver = EchoResolver()
    register_resolver(resolver)
    yield resolver
    unregister_resolver(resolver)


def test_a_resolver_adds_a_group_and_its_batch_handler_runs_deliveries_together(echo) -> None:
    messages = publish_many([ProbeHappened(n=n) for n in range(4)])
    stats = Worker(keep_leases=False).run_until_idle()
    assert len(echo.batches) == 1, "one call for the whole batch"
    assert sorted(echo.batches[0]) == [0, 1, 2, 3], "the raw content of each delivery"
    rows = {r.message_id: r for r in ReceivedMessage.objects.filter(group="echo:test")}
    assert [rows[m.pk].status for m in messages] == [
        MessageStatus.SUCCEEDED, MessageStatus.RETRYING, MessageStatus.SUCCEEDED,
        MessageStatus.RETRYING]
    assert rows[messages[1].pk].last_error.startswith("RuntimeError: odd 1")
    # The decorator-registered groups ran as usual beside it.
    assert DeliveryRow.objects.count() == 8
    assert stats.succeeded == 8 + 2 and stats.retried == 2


# --- instrumentation ------------------------------------------------------------------------


class Recorder(Instrumentation):
    def __init__(self, fail_attempts_of: int | None = None) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.fail_attempts_of = fail_attempts_of

    @contextmanager
    def publish(self, message: PublishedMessage, event: Any) -> Iterator[None]:
        message.headers["traceparent"] = "00-" + "a" * 32 + "-" + "b" * 16 + "-01"
        yield
        self.calls.append(("published", message.topic))

    @contextmanager
    def dispatch(self, message: PublishedMessage, groups: Sequence[str]) -> Iterator[None]:
        yield
        self.calls.append(("dispatched", tuple(sorted(groups))))

    @contextmanager
    def attempt(self, delivery: Delivery) -> Iterator[None]:
        if getattr(delivery.event, "n", None) == self.fail_attempts_of:
            raise RuntimeError("injected by instrumentation")
        try:
            yield
        except Exception as exc:
            self.calls.append(("attempt failed", type(exc).__name__))
            raise
        self.calls.append(("attempt", (delivery.context.group, delivery.context.attempt)))

    def outcome(self, row: Any, outcome: Outcome, error: BaseException | None) -> None:
        self.calls.append(("outcome", outcome.value))


def test_instrumentation_sees_publish_dispatch_attempts_and_outcomes() -> None:
    recorder = Recorder()
    with override_settings(INTEGRATION_EVENTS={
            "INSTRUMENTATION": ["tests.test_seams.shared_recorder"]}):
        shared_recorder.calls.clear()
        message = publish(ProbeHappened(n=1, behaviour="fail:1", only_group="probe-a"))
        Worker(keep_leases=False, hooks=Hooks([recorder])).run_until_idle()
        assert shared_recorder.calls == [("published", ProbeHappened.topic)]
    stored = PublishedMessage.objects.get(pk=message.pk)
    assert stored.headers["traceparent"].startswith("00-aaaa"), "written inside the hook"
    assert ("dispatched", ("probe-a", "probe-b")) in recorder.calls
    assert ("attempt failed", "RuntimeError") in recorder.calls
    assert ("attempt", ("probe-b", 1)) in recorder.calls
    assert sorted(c[1] for c in recorder.calls if c[0] == "outcome") == ["retried", "succeeded"]


shared_recorder = Recorder()


def test_an_attempt_hook_that_raises_fails_the_attempt_like_the_handler() -> None:
    publish(ProbeHappened(n=7))
    publish(ProbeHappened(n=8))
    Worker(keep_leases=False, hooks=Hooks([Recorder(fail_attempts_of=7)])).run_until_idle()
    failed = ReceivedMessage.objects.filter(status=MessageStatus.RETRYING)
    assert failed.count() == 2
    assert all("injected by instrumentation" in r.last_error for r in failed)
    assert DeliveryRow.objects.filter(n=8).count() == 2


class ProcessRecorder(Instrumentation):
    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def process_started(self) -> None:
        import os

        self.calls.append(("process_started", os.getpid()))

    def task_finished(self) -> None:
        import os

        self.calls.append(("task_finished", os.getpid()))


process_recorder = ProcessRecorder()


def test_a_spawned_worker_process_and_each_finished_task_reach_the_hooks(monkeypatch) -> None:
    """post_spawn (sent by django-q2 in each new worker process) reaches process_started;
    both engine tasks end with task_finished, even when the task raises."""
    import os

    from django_q.signals import post_spawn

    from integration_events import tasks

    process_recorder.calls.clear()
    with override_settings(INTEGRATION_EVENTS={
            "INSTRUMENTATION": ["tests.test_seams.process_recorder"], "NUDGE": False,
            "IDLE_LINGER": 0}):
        # Without the heartbeat thread post_spawn also starts: in this process it would beat
        # into the test database for the rest of the session.
        post_spawn.disconnect(dispatch_uid=tasks.HEARTBEAT_UID)
        try:
            post_spawn.send(sender="django_q", proc_name="Process-1")
        finally:
            post_spawn.connect(tasks.start_heartbeat, dispatch_uid=tasks.HEARTBEAT_UID)
        tasks.process_messages("default")
        tasks.sweep()
        monkeypatch.setattr(Worker, "run", lambda self: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            tasks.process_messages("default")
    pid = os.getpid()
    assert process_recorder.calls == [("process_started", pid), ("task_finished", pid),
                                      ("task_finished", pid), ("task_finished", pid)]


class BrokenHooks(Instrumentation):
    def task_finished(self) -> None:
        raise RuntimeError("exporter down")


def test_a_failing_task_finished_hook_is_logged_not_raised(caplog) -> None:
    from integration_events import tasks

    with override_settings(INTEGRATION_EVENTS={
            "INSTRUMENTATION": ["tests.test_seams.BrokenHooks"], "NUDGE": False,
            "IDLE_LINGER": 0}):
        assert tasks.process_messages("default") is not None
    assert "instrumentation hook failed hook=task_finished" in caplog.text
