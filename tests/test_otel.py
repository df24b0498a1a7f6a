"""integration_events.otel in-process, with the SDK's in-memory exporter and reader: one trace
from the request that published through every attempt, attributes of the pinned messaging
conventions, ERROR on failed attempts, and metrics equal to the database's counts."""

from __future__ import annotations

import subprocess
import sys
from collections import deque

import pytest
from django.db.models import Count, Sum
from django.test import override_settings
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from integration_events import publish, publish_many
from integration_events.models import MessageStatus, PublishedMessage, ReceivedMessage
from integration_events.otel import (
    ATTEMPT,
    DEAD_LETTERED,
    DELIVERED,
    PROCESS_DURATION,
    PUBLISH_TO_START,
    PUBLISHED,
    RETRIED,
    OpenTelemetry,
)
from integration_events.testing import deliver_pending, make_due
from tests import otel_support
from tests.conftest import wait_for
from tests.eventapp.events import ChainLinked, ProbeHappened
from tests.otel_support import Telemetry, read_spans

pytestmark = pytest.mark.django_db

def test_one_trace_from_the_request_through_every_attempt(otel: Telemetry) -> None:
    with otel.tracer.start_as_current_span("POST /equipment/") as request:
        message = publish(ProbeHappened(n=1, behaviour="fail:1", only_group="probe-a"))
    deliver_pending()  # probe-a fails its first attempt, probe-b succeeds
    make_due()  # the retry, "an hour later"
    deliver_pending()
    assert ReceivedMessage.objects.filter(status=MessageStatus.SUCCEEDED).count() == 2

    trace_id = request.get_span_context().trace_id
    [create] = otel.finished("create ")
    process = sorted(otel.finished("process "), key=lambda s: (
        s.attributes["messaging.consumer.group.name"], s.attributes[ATTEMPT]))
    assert [(s.attributes["messaging.consumer.group.name"], s.attributes[ATTEMPT])
            for s in process] == [("probe-a", 1), ("probe-a", 2), ("probe-b", 1)]
    assert {s.context.trace_id for s in [create, *process]} == {trace_id}
    assert create.parent.span_id == request.get_span_context().span_id
    assert create.name == f"create {ProbeHappened.topic}" and create.kind is SpanKind.PRODUCER
    assert create.attributes["messaging.operation.type"] == "create"
    assert create.attributes["messaging.message.id"] == str(message.pk)
    # The creation context is stored with the message: the create span's.
    stored = PublishedMessage.objects.get(pk=message.pk).headers["traceparent"]
    assert stored.startswith(f"00-{trace_id:032x}-{create.context.span_id:016x}-")
    for span in process:
        assert span.name == f"process {ProbeHappened.topic}" and span.kind is SpanKind.CONSUMER
        assert span.parent.span_id == create.context.span_id
        assert [link.context.span_id for link in span.links] == [create.context.span_id]
        assert span.attributes["messaging.system"] == "integration_events"
        assert span.attributes["messaging.operation.type"] == "process"
        assert span.attributes["messaging.destination.name"] == ProbeHappened.topic
        assert span.attributes["messaging.message.id"] == str(message.pk)
    failed, retried, other = process
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.attributes["error.type"] == "RuntimeError"
    assert [e.name for e in failed.events] == ["exception"]
    assert "fails on attempt 1" in failed.events[0].attributes["exception.message"]
    assert retried.status.status_code is StatusCode.UNSET and other.events == ()


def test_process_spans_end_when_their_handler_returns(otel: Telemetry) -> None:
    # They reach the span processor later (OpenTelemetry.end_later), each with the time its
    # handler returned: a span of 0.2 s ends before the next attempt starts.
    publish_many([ProbeHappened(n=n, behaviour="sleep:0.2", only_group="probe-a")
                  for n in range(2)])
    deliver_pending()
    spans = sorted(otel.finished("process "), key=lambda s: s.start_time)
    assert len(spans) == 4
    slow = [s for s in spans if s.attributes["messaging.consumer.group.name"] == "probe-a"]
    for span in slow:
        assert 0.2e9 <= span.end_time - span.start_time < 1e9
    for before, after in zip(spans, spans[1:], strict=False):
        assert before.end_time <= after.start_time
    assert otel.instrument._ends == deque()


def test_a_span_waits_for_the_pass_at_most_100_ms_before_the_next_handler_starts(
        otel: Telemetry, monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    from integration_events import otel as otel_module

    span = otel.tracer.start_span("process probe")
    otel.instrument.end_later(span)
    with monkeypatch.context() as patched:  # "at once", however slow the machine is
        patched.setattr(otel_module, "ENDS_WAIT_NS", 10 * 10**9)
        otel.instrument.end_overdue()  # a handler starts at once: the span still waits
    assert otel.finished("process") == [] and span.end_time is None
    time.sleep(0.11)
    otel.instrument.end_overdue()  # one starts after 110 ms: it goes to the processor
    assert [s.name for s in otel.finished("process")] == ["process probe"]
    otel.instrument.end_overdue()  # nothing waits: nothing to do


def test_task_finished_ends_the_spans_still_waiting_for_their_pass(otel: Telemetry) -> None:
    # A cluster's task ends: what waits is handed on before the SDK is flushed (a recycled
    # worker never runs the SDK's exit handler).
    span = otel.tracer.start_span("process probe")
    otel.instrument.end_later(span)
    assert otel.finished("process") == []
    otel.instrument.task_finished()
    assert [s.name for s in otel.finished("process")] == ["process probe"]


def test_an_event_published_by_a_handler_continues_the_trace(otel: Telemetry) -> None:
    with override_settings(INTEGRATION_EVENTS={
            "MAX_HOPS": 2, "INSTRUMENTATION": otel_support.INSTRUMENTATION}):
        first = publish(ChainLinked(depth=0))
        deliver_pending()
    creates = {s.attributes["messaging.message.id"]: s for s in otel.finished("create ")}
    processes = {s.attributes["messaging.message.id"]: s for s in otel.finished("process ")}
    second = PublishedMessage.objects.get(causation_id=first.pk)
    # The second message's create span is a child of the first message's process span, and
    # its stored creation context is its own, not its parent's.
    assert creates[str(second.pk)].parent.span_id == processes[str(first.pk)].context.span_id
    assert second.headers["traceparent"].split("-")[2] == \
        f"{creates[str(second.pk)].context.span_id:016x}"
    assert len({s.context.trace_id for s in [*creates.values(), *processes.values()]}) == 1


def test_a_creation_context_the_caller_brings_is_kept(otel: Telemetry) -> None:
    remote = "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"
    message = publish(ProbeHappened(n=2), headers={"traceparent": remote})
    deliver_pending()
    assert otel.finished("create ") == [], "no create span for a message that has a context"
    assert PublishedMessage.objects.get(pk=message.pk).headers["traceparent"] == remote
    for span in otel.finished("process "):
        assert span.context.trace_id == int("ab" * 16, 16)
        assert [link.context.span_id for link in span.links] == [int("cd" * 8, 16)]


def test_a_message_without_a_context_gets_a_root_process_span(otel: Telemetry) -> None:
    with override_settings(INTEGRATION_EVENTS={"MAX_ATTEMPTS": 3}):
        publish(ProbeHappened(n=3))  # published by a process without the instrumentation
    deliver_pending()
    spans = otel.finished("process ")
    assert len(spans) == 2 and all(s.parent is None and not s.links for s in spans)


@override_settings(INTEGRATION_EVENTS={
    "MAX_ATTEMPTS": 3, "INSTRUMENTATION": otel_support.INSTRUMENTATION,
    # A savepoint per handler: the optimistic batch would run the handlers before a failing
    # one twice (the first run rolled back), and the duration histogram counts runs.
    "EXECUTE_OPTIMISTIC": False})
def test_metrics_equal_the_database_counts(otel: Telemetry,
                                          django_capture_on_commit_callbacks) -> None:
    with django_capture_on_commit_callbacks(execute=True):  # "published" counts at commit
        publish_many([ProbeHappened(n=n) for n in range(5)])
        publish(ProbeHappened(n=5, behaviour="fail:1", only_group="probe-b"))
        publish(ProbeHappened(n=6, behaviour="fail", only_group="probe-a"))
    deliver_pending()
    for _ in range(3):
        make_due()
        deliver_pending()
    topic = ProbeHappened.topic
    inbox = ReceivedMessage.objects.all()
    succeeded = dict(inbox.filter(status=MessageStatus.SUCCEEDED).values_list("group")
                     .annotate(n=Count("id")))
    failed = dict(inbox.filter(status=MessageStatus.FAILED).values_list("group")
                  .annotate(n=Count("id")))
    # Every attempt but the successful or final one was a retry.
    retried = dict(inbox.values_list("group").annotate(n=Sum("attempts")))
    for group in retried:
        retried[group] -= succeeded.get(group, 0) + failed.get(group, 0)
    assert otel.sums(PUBLISHED) == {(topic, ""): PublishedMessage.objects.count()}
    assert otel.sums(DELIVERED) == {(topic, g): n for g, n in succeeded.items()}
    assert otel.sums(DEAD_LETTERED) == {(topic, g): n for g, n in failed.items()} \
        == {(topic, "probe-a"): 1}
    assert otel.sums(RETRIED) == {(topic, g): n for g, n in retried.items() if n} \
        == {(topic, "probe-a"): 2, (topic, "probe-b"): 1}
    attempts = inbox.aggregate(n=Sum("attempts"))["n"]
    assert sum(p.count for p in otel.points(PROCESS_DURATION)) == attempts == 14 + 3
    errors = [p for p in otel.points(PROCESS_DURATION) if "error.type" in p.attributes]
    assert sum(p.count for p in errors) == 4
    # One latency per (message, group): first attempts only.
    assert sum(p.count for p in otel.points(PUBLISH_TO_START)) == inbox.count() == 14
    assert all(p.min >= 0 and p.max < 60 for p in otel.points(PUBLISH_TO_START))


@pytest.mark.django_db(transaction=True)
def test_published_is_counted_at_commit_not_for_a_rollback(otel: Telemetry) -> None:
    from django.db import transaction

    with pytest.raises(RuntimeError), transaction.atomic():
        publish(ProbeHappened(n=1))
        raise RuntimeError("the request failed")
    with transaction.atomic():
        publish(ProbeHappened(n=2))
    assert otel.sums(PUBLISHED) == {(ProbeHappened.topic, ""): 1}
    assert len(otel.finished("create ")) == 2, "a span for each INSERT that ran"


def test_without_an_sdk_nothing_is_recorded_and_nothing_breaks() -> None:
    """The API alone (its proxy providers, no SDK set): deliveries go on, no header added."""
    otel_support.CURRENT = OpenTelemetry()
    try:
        with override_settings(INTEGRATION_EVENTS={
                "INSTRUMENTATION": otel_support.INSTRUMENTATION}):
            message = publish(ProbeHappened(n=1))
            assert deliver_pending().succeeded == 2
    finally:
        otel_support.CURRENT = None
    assert "traceparent" not in PublishedMessage.objects.get(pk=message.pk).headers


def test_task_finished_flushes_buffered_spans() -> None:
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    spans = InMemorySpanExporter()
    provider = TracerProvider()
    # A delay no test waits for: only a flush exports.
    provider.add_span_processor(BatchSpanProcessor(spans, schedule_delay_millis=600_000))
    instrument = OpenTelemetry(provider, MeterProvider())
    with instrument.tracer.start_as_current_span("buffered"):
        pass
    assert spans.get_finished_spans() == ()
    instrument.task_finished()
    assert [s.name for s in spans.get_finished_spans()] == ["buffered"]
    provider.shutdown()


def test_configure_runs_once_per_process() -> None:
    calls: list[int] = []

    class Configured(OpenTelemetry):
        def configure(self) -> None:
            calls.append(1)

    instrument = Configured()
    instrument.process_started()
    instrument.process_started()
    instrument._pid = -1  # as in a forked child: another pid
    instrument.process_started()
    assert calls == [1, 1]


def test_without_the_api_the_error_says_what_to_install() -> None:
    script = (
        "import sys; sys.modules['opentelemetry'] = None\n"
        "import django, os\n"
        "os.environ['DJANGO_SETTINGS_MODULE'] = 'tests.settings'\n"
        "django.setup()\n"
        "try:\n"
        "    import integration_events.otel\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    assert out.startswith("ImproperlyConfigured ")
    assert "django-integration-events[otel]" in out


@pytest.mark.cluster
@pytest.mark.django_db(transaction=True)
def test_a_real_cluster_exports_the_attempts_into_the_publishing_trace(
        otel: Telemetry, cluster, tmp_path) -> None:
    """Spans from the worker processes (set up there by configure() after the fork, written
    only by the end-of-task flush) join the trace of the request that published."""
    import os

    with otel.tracer.start_as_current_span("POST /equipment/") as request:
        message = publish(ProbeHappened(n=1, behaviour="fail:1", only_group="probe-a"))
    [create] = otel.finished("create ")
    c = cluster(DJANGO_SETTINGS_MODULE="tests.otel_settings", IE_OTEL_SPANS_DIR=str(tmp_path))
    wait_for(lambda: ReceivedMessage.objects.filter(status=MessageStatus.SUCCEEDED).count()
             == 2, 60, "the deliveries and the retry", c.log)
    wait_for(lambda: len(read_spans(tmp_path)) >= 3, 60, "the flushed spans", c.log)
    spans = sorted(read_spans(tmp_path), key=lambda s: (
        s["attributes"]["messaging.consumer.group.name"], s["attributes"][ATTEMPT]))
    assert [(s["attributes"]["messaging.consumer.group.name"], s["attributes"][ATTEMPT],
             s["status"]) for s in spans] == [
        ("probe-a", 1, "ERROR"), ("probe-a", 2, "UNSET"), ("probe-b", 1, "UNSET")]
    trace_id = f"{request.get_span_context().trace_id:032x}"
    create_id = f"{create.context.span_id:016x}"
    for span in spans:
        assert span["pid"] != os.getpid(), "exported by a worker process"
        assert span["name"] == f"process {ProbeHappened.topic}" and span["kind"] == "CONSUMER"
        assert span["trace_id"] == trace_id
        assert span["parent_id"] == create_id and span["links"] == [create_id]
        assert span["attributes"]["messaging.message.id"] == str(message.pk)
        assert span["attributes"]["messaging.destination.name"] == ProbeHappened.topic
        assert span["attributes"]["messaging.system"] == "integration_events"
    assert spans[0]["events"] == ["exception"]
    assert spans[0]["attributes"]["error.type"] == "RuntimeError"


def test_histograms_use_second_buckets(otel: Telemetry) -> None:
    from integration_events.otel import DURATION_BUCKETS

    publish(ProbeHappened(n=1))
    deliver_pending()
    [point, *_] = otel.points(PROCESS_DURATION)
    assert tuple(point.explicit_bounds) == DURATION_BUCKETS
    assert sum(point.bucket_counts[:8]) == point.count, "a probe handler takes well under 0.5 s"


def test_docs_list_every_instrument(otel: Telemetry, django_capture_on_commit_callbacks) -> None:
    import re

    from django.conf import settings

    with django_capture_on_commit_callbacks(execute=True):
        publish(ProbeHappened(n=1, behaviour="fail", only_group="probe-a"))
    for _ in range(3):
        deliver_pending()
        make_due()
    text = (settings.BASE_DIR / "docs" / "observability.md").read_text()
    documented = set(re.findall(r"^\| `([a-z_]+\.[a-z_.]+)` \| (?:counter|histogram) \|", text,
                                re.M))
    data = otel.reader.get_metrics_data()
    names = {m.name for rm in data.resource_metrics for sm in rm.scope_metrics
             for m in sm.metrics}
    assert names == documented == {PUBLISHED, DELIVERED, RETRIED, DEAD_LETTERED,
                                   PROCESS_DURATION, PUBLISH_TO_START}
