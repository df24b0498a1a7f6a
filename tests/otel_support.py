"""OpenTelemetry helpers for the tests: an SDK set up in memory (in-process tests), and the
instrumentation a real qcluster's workers use to write their spans to files the test reads."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from integration_events.otel import OpenTelemetry

# What INTEGRATION_EVENTS["INSTRUMENTATION"] names in the in-process tests (the conftest's
# ``otel`` fixture sets it).
CURRENT: OpenTelemetry | None = None
INSTRUMENTATION = ["tests.otel_support.CURRENT"]


class Telemetry:
    """An SDK in memory: spans (exported at once) and metrics (read on demand)."""

    def __init__(self) -> None:
        self.spans = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])
        self.instrument = OpenTelemetry(self.tracer_provider, self.meter_provider)
        self.tracer = self.tracer_provider.get_tracer("tests")

    def finished(self, name_prefix: str = "") -> list[Any]:
        return [s for s in self.spans.get_finished_spans() if s.name.startswith(name_prefix)]

    def points(self, name: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        return [point for rm in data.resource_metrics for sm in rm.scope_metrics
                for metric in sm.metrics if metric.name == name
                for point in metric.data.data_points]

    def sums(self, name: str) -> dict[tuple[str, str], int]:
        return {(p.attributes["messaging.destination.name"],
                 p.attributes.get("messaging.consumer.group.name", "")): p.value
                for p in self.points(name)}


def span_record(span: ReadableSpan) -> dict[str, Any]:
    """What the cluster test needs of a span, as JSON."""
    assert span.context is not None
    return {
        "name": span.name, "kind": span.kind.name, "pid": os.getpid(),
        "trace_id": f"{span.context.trace_id:032x}", "span_id": f"{span.context.span_id:016x}",
        "parent_id": f"{span.parent.span_id:016x}" if span.parent else None,
        "links": [f"{link.context.span_id:016x}" for link in span.links],
        "attributes": dict(span.attributes or {}),
        "status": span.status.status_code.name,
        "events": [e.name for e in span.events],
    }


class JsonLinesExporter(SpanExporter):
    """Appends each exported span as a JSON line to a file of this process's own."""

    def __init__(self, directory: str) -> None:
        self.path = Path(directory) / f"spans-{os.getpid()}.jsonl"

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self.path.open("a") as out:
            out.write("".join(json.dumps(span_record(s)) + "\n" for s in spans))
        return SpanExportResult.SUCCESS


class FileTelemetry(OpenTelemetry):
    """The SDK set up per process (a worker after its fork): spans are batched for ten
    minutes, so only the end-of-task flush writes them, to IE_OTEL_SPANS_DIR."""

    def configure(self) -> None:
        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(
            JsonLinesExporter(os.environ["IE_OTEL_SPANS_DIR"]), schedule_delay_millis=600_000))
        trace.set_tracer_provider(provider)


def read_spans(directory: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for path in sorted(directory.glob("spans-*.jsonl"))
            for line in path.read_text().splitlines() if line]
