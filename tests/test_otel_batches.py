"""integration_events.otel where the engine runs no single handler: a batch handler's call (a
run-time group such as a broker bridge's sender) and a lease the sweep finds expired."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import timedelta

import pytest
from django.db.models import F
from django.db.models.functions import Now
from opentelemetry.trace import SpanKind, StatusCode

from integration_events import publish, publish_many
from integration_events.models import MessageStatus, ReceivedMessage
from integration_events.otel import (
    DEAD_LETTERED,
    DELIVERED,
    PROCESS_DURATION,
    PUBLISH_TO_START,
    RETRIED,
)
from integration_events.registry import register_resolver, unregister_resolver
from integration_events.testing import deliver_pending
from integration_events.worker import Worker
from tests.conftest import claim_rows
from tests.eventapp.events import ProbeHappened
from tests.otel_support import Telemetry
from tests.test_seams import EchoResolver

pytestmark = pytest.mark.django_db

TOPIC = ProbeHappened.topic


@pytest.fixture
def echo() -> Iterator[EchoResolver]:
    resolver = EchoResolver()  # "echo:test": a batch handler failing the odd n
    register_resolver(resolver)
    yield resolver
    unregister_resolver(resolver)


def test_a_batch_handler_call_is_one_process_span_linked_to_every_message(
        otel: Telemetry, echo: EchoResolver) -> None:
    with otel.tracer.start_as_current_span("POST /probes/"):
        publish_many([ProbeHappened(n=n) for n in range(4)])
    deliver_pending()
    assert echo.batches and sorted(echo.batches[0]) == [0, 1, 2, 3]
    creates = otel.finished("create ")
    batch = [s for s in otel.finished("process ")
             if s.attributes["messaging.consumer.group.name"] == "echo:test"]
    assert len(batch) == 1, "one span for the one call"
    [span] = batch
    assert span.name == f"process {TOPIC}" and span.kind is SpanKind.CONSUMER
    assert span.parent is None, "a batch's messages come from many traces: links only"
    assert sorted(link.context.span_id for link in span.links) \
        == sorted(c.context.span_id for c in creates) and len(creates) == 4
    assert span.attributes["messaging.batch.message_count"] == 4
    assert span.attributes["messaging.destination.name"] == TOPIC
    assert span.attributes["messaging.operation.type"] == "process"
    # n=1 and n=3 were reported failed by the handler.
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description.startswith("2 of 4 deliveries failed, the first: "
                                              "RuntimeError: odd ")
    assert span.attributes["error.type"] == "RuntimeError"
    durations = [p for p in otel.points(PROCESS_DURATION)
                 if p.attributes.get("messaging.consumer.group.name") == "echo:test"]
    assert sum(p.count for p in durations) == 1, "one point per call"
    latencies = [p for p in otel.points(PUBLISH_TO_START)
                 if p.attributes.get("messaging.consumer.group.name") == "echo:test"]
    assert sum(p.count for p in latencies) == 4, "one per first attempt"
    assert otel.sums(DELIVERED)[(TOPIC, "echo:test")] == 2
    assert otel.sums(RETRIED)[(TOPIC, "echo:test")] == 2


def test_a_batch_handler_that_raises_records_the_exception(
        otel: Telemetry, echo: EchoResolver) -> None:
    def explode(deliveries):  # type: ignore[no-untyped-def]
        raise ConnectionError("the outside system hung up")

    echo.sub = dataclasses.replace(echo.sub, batch_handler=explode)
    publish_many([ProbeHappened(n=n) for n in range(3)])
    deliver_pending()
    [span] = [s for s in otel.finished("process ")
              if s.attributes["messaging.consumer.group.name"] == "echo:test"]
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["error.type"] == "ConnectionError"
    assert [e.name for e in span.events] == ["exception"]
    assert otel.sums(RETRIED)[(TOPIC, "echo:test")] == 3
    assert set(ReceivedMessage.objects.filter(group="echo:test")
               .values_list("status", flat=True)) == {MessageStatus.RETRYING}


def test_a_lease_the_sweep_finds_expired_is_counted(otel: Telemetry) -> None:
    publish(ProbeHappened(n=1, only_group="probe-a"))
    worker = Worker(keep_leases=False)
    worker.dispatch_batch()
    ReceivedMessage.objects.filter(group="probe-b").update(status=MessageStatus.SUCCEEDED)
    for attempt in (1, 2, 3):
        ReceivedMessage.objects.filter(group="probe-a").update(next_attempt_at=Now())
        (row,) = claim_rows(ReceivedMessage, 1, count_attempt=False)
        # The attempt is counted, then the worker "dies" mid-handler.
        ReceivedMessage.objects.filter(pk=row.pk).update(
            attempts=F("attempts") + 1, lease_until=Now() - timedelta(seconds=1))
        swept = worker.sweep()
        assert (swept.released, swept.dead) == ((1, 0) if attempt < 3 else (0, 1))
    assert ReceivedMessage.objects.get(group="probe-a").status == MessageStatus.FAILED
    assert otel.sums(RETRIED) == {(TOPIC, "probe-a"): 2}
    assert otel.sums(DEAD_LETTERED) == {(TOPIC, "probe-a"): 1}


def test_histogram_points_are_handed_over_in_runs_and_none_is_lost(otel: Telemetry) -> None:
    from integration_events.otel import POINTS_BATCH

    publish_many([ProbeHappened(n=n) for n in range(40)])
    deliver_pending()
    # 80 attempts: 80 durations and 80 latencies, handed to the SDK POINTS_BATCH at a time...
    assert 0 < len(otel.instrument._points) < POINTS_BATCH
    # ...and the rest when the SDK collects.
    assert sum(p.count for p in otel.points(PROCESS_DURATION)) == 80
    assert sum(p.count for p in otel.points(PUBLISH_TO_START)) == 80
    assert len(otel.instrument._points) == 0


def test_a_duration_point_keeps_its_process_span_as_exemplar(otel: Telemetry) -> None:
    publish(ProbeHappened(n=1, only_group="probe-a"))
    deliver_pending()
    spans = {s.context.span_id: s for s in otel.finished("process ")}
    exemplars = [e for p in otel.points(PROCESS_DURATION) for e in p.exemplars]
    assert exemplars, "the SDK's default filter keeps exemplars of sampled spans"
    for exemplar in exemplars:
        assert exemplar.span_id in spans, "the span current when the handler ended"
