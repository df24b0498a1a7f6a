"""What the OpenTelemetry instrumentation costs per delivery, in CPU microseconds.

    .venv/bin/python bench/otel_overhead.py                  # SQLite (file), 9 rounds
    IE_DB=postgres IE_DB_NAME=ie_bench .venv/bin/python bench/otel_overhead.py --rounds 15

Three configurations, interleaved round by round (the order rotates, and is reversed every
other round) in one process, each delivering the same workload (N events x 2 groups)
in-process with a Worker:

- "API absent": no instrumentation (what a project without the [otel] extra runs; the engine
  skips the hooks altogether);
- "API, no SDK": integration_events.otel.OpenTelemetry on the API's own proxy providers (the
  [otel] extra installed, no SDK set up): spans are skipped, metric calls go to no-op proxies;
- "SDK, no-op exporter": the SDK's TracerProvider with a BatchSpanProcessor and a MeterProvider
  with a periodic reader, both exporting to exporters that drop everything, so every span
  and data point is built, processed and aggregated.

With --split, also: the same with each span handed to the processor when it ends; "SDK, a bare
span only", an instrumentation that is not this library's and does the least any span per
attempt can (one span with no attributes, parent or link, current while the handler runs,
ended with the pass's others, nothing else); "SDK, a bare span + metrics", that and this
library's metrics (what the issue asks of the spans left out); "SDK, exemplars off", the
full configuration on a MeterProvider with exemplar_filter=AlwaysOffExemplarFilter() (the
SDK's default samples an exemplar from each point measured under a sampled span); and the
SDK's parts alone (traces only, traces with no span processor, metrics only).

CPU time (time.process_time: this process's threads, the span processor's included; on SQLite
the database's work too) is measured instead of wall time, which swings too much on a shared
machine. Each round ends, inside its timing, with the flush the engine runs as each task ends
(task_finished), so the SDK's export work is its own round's, not the next configuration's,
and starts after a full garbage collection, so that no round pays for an earlier one's
garbage (a round's own garbage beyond the young generations goes uncounted: the SDK's figures
are, if anything, low).
Reported: the median per-delivery CPU of each configuration and the median of the per-round
differences to "API absent" (end to end: on a busy machine these still move by
several microseconds between runs), and the hooks alone: the instrumentation's contexts and
outcome call around a no-op handler for one real delivery, 20,000 times (what the
instrumentation adds, to a tenth of a microsecond; with the SDK it leaves out the garbage
collector's share, which the end-to-end figure has); and the SDK's own floor: one process
span and two histogram points made directly on the same providers, which no instrumentation
that emits what the issue asks for can go under. Goals (issue 15): <= 5 us without the SDK,
<= 60 us with it, judged on the end-to-end figure. A benchmark, not a test: it exits 1 if a goal
is missed.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
os.environ.setdefault("IE_DB_NAME", "bench")
os.environ.setdefault("IE_SQLITE_TEST_PATH", str(ROOT / "var" / "bench-otel.sqlite3"))
os.environ.setdefault("IE_LOG_LEVEL", "WARNING")
os.environ.setdefault("DJANGO_DEBUG", "0")

import django  # noqa: E402

django.setup()

from django.db import connection  # noqa: E402
from django.test import override_settings  # noqa: E402
from opentelemetry import context as otel_context  # noqa: E402
from opentelemetry import trace as otel_trace  # noqa: E402
from tables import empty  # noqa: E402  (bench/tables.py)

from integration_events import publish_many  # noqa: E402
from integration_events.instrumentation import Hooks  # noqa: E402
from integration_events.models import PublishedMessage, ReceivedMessage  # noqa: E402
from integration_events.otel import OpenTelemetry, _ProcessSpan  # noqa: E402
from integration_events.worker import Worker  # noqa: E402
from tests.eventapp.events import ProbeHappened  # noqa: E402
from tests.eventapp.models import Delivery  # noqa: E402

GOALS = {"API, no SDK": 5.0, "SDK, no-op exporter": 60.0}


def sdk_instrument(exemplars: bool = True) -> OpenTelemetry:
    from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
    from opentelemetry.sdk.metrics.export import (
        MetricExporter,
        MetricExportResult,
        PeriodicExportingMetricReader,
    )
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class DropSpans(SpanExporter):
        def export(self, spans):  # type: ignore[no-untyped-def]
            return SpanExportResult.SUCCESS

    class DropMetrics(MetricExporter):
        def export(self, metrics_data, timeout_millis=10_000, **kwargs):  # type: ignore[no-untyped-def]
            return MetricExportResult.SUCCESS

        def force_flush(self, timeout_millis=10_000):  # type: ignore[no-untyped-def]
            return True

        def shutdown(self, timeout_millis=30_000, **kwargs):  # type: ignore[no-untyped-def]
            pass

    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(DropSpans()))
    meter_provider = MeterProvider(metric_readers=[PeriodicExportingMetricReader(
        DropMetrics(), export_interval_millis=5_000)],
        exemplar_filter=None if exemplars else AlwaysOffExemplarFilter())
    return OpenTelemetry(tracer_provider, meter_provider)


def split_configs(full: Hooks) -> dict[str, Hooks]:
    """The SDK's parts alone, on the full configuration's providers (or none)."""
    from opentelemetry import metrics, trace
    from opentelemetry.sdk.trace import TracerProvider

    sdk = full.instruments[0]
    assert isinstance(sdk, OpenTelemetry)
    tracer_provider, meter_provider = sdk.tracer_provider(), sdk.meter_provider()
    class EndAtOnce(OpenTelemetry):
        """Each process span ended when its handler returns (not with the pass's others)."""

        def end_later(self, span):  # type: ignore[no-untyped-def]
            span.end()

    return {
        "SDK, spans ended at once": Hooks([EndAtOnce(tracer_provider, meter_provider)]),
        "SDK, exemplars off": Hooks([sdk_instrument(exemplars=False)]),
        "SDK, a bare span only": Hooks([BareSpan(tracer_provider, metrics.NoOpMeterProvider())]),
        "SDK, a bare span + metrics": Hooks([BareSpan(tracer_provider, meter_provider)]),
        "SDK traces only": Hooks([OpenTelemetry(tracer_provider, metrics.NoOpMeterProvider())]),
        "SDK traces, no processor": Hooks([OpenTelemetry(TracerProvider(),
                                                         metrics.NoOpMeterProvider())]),
        "SDK metrics only": Hooks([OpenTelemetry(trace.NoOpTracerProvider(), meter_provider)]),
    }


class BareSpan(OpenTelemetry):
    """The least a span per attempt can be: one span with no attributes, parent or link,
    current while the handler runs, ended with the pass's others (the library's own
    end_later), and, on a metering meter provider, the library's metrics around it (its
    process context with tracing off). Not the library's span: what any instrumentation
    that emits a span per attempt costs at the least, end to end."""

    def attempt(self, delivery: Any) -> AbstractContextManager[None]:
        self._ensure_configured()
        return _BareAttempt(self, _ProcessSpan(self, delivery, False, True)
                            if self.metering() else None)


class _BareAttempt:
    __slots__ = ("owner", "metrics", "span", "token")

    def __init__(self, owner: BareSpan, metrics: Any) -> None:
        self.owner, self.metrics = owner, metrics

    # In the library's order: the latency point before the span starts, the duration point
    # while it is still current (so the same points offer the SDK an exemplar).
    def __enter__(self) -> None:
        owner = self.owner
        owner.end_overdue()
        if self.metrics is not None:
            self.metrics.__enter__()
        self.span = owner.tracer.start_span("process")
        self.token = otel_context.attach(otel_trace.set_span_in_context(self.span))

    def __exit__(self, *exc: Any) -> None:
        if self.metrics is not None:
            self.metrics.__exit__(*exc)
        otel_context.detach(self.token)
        self.owner.end_later(self.span)


def one_round(hooks: Hooks, events: int) -> float:
    """CPU microseconds per delivery for ``events`` x 2 deliveries with ``hooks``."""
    with override_settings(INTEGRATION_EVENTS={"NUDGE": False}):
        publish_many([ProbeHappened(n=n) for n in range(events)])
        worker = Worker(keep_leases=False, hooks=hooks)
        worker.dispatch_batch(limit=events)  # fan-out is not a delivery: outside the timing
        # The garbage earlier rounds left (an SDK round leaves much) is collected now, not
        # during this round: without it, the configuration after an SDK round paid for it.
        gc.collect()
        started = time.process_time()
        stats = worker.run_until_idle()
        # As each engine task ends (and inside the timing): what the SDK's processor and
        # reader still have in hand is exported now, not in the next configuration's round.
        hooks.task_finished()
        cpu = time.process_time() - started
    assert stats.succeeded == 2 * events, stats
    empty(Delivery, ReceivedMessage, PublishedMessage)  # bench/tables.py
    return cpu / stats.succeeded * 1e6


def hooks_alone(hooks: Hooks, times: int = 20_000) -> float:
    """CPU microseconds of the hooks around one real delivery's (no-op) handler run."""
    from integration_events.delivery import build_delivery
    from integration_events.outcomes import Outcome

    with override_settings(INTEGRATION_EVENTS={"NUDGE": False}):
        publish_many([ProbeHappened(n=1)])
        Worker(keep_leases=False).dispatch_batch()
    row = ReceivedMessage.objects.first()
    assert row is not None
    row.attempts = 1
    delivery = build_delivery(row, row.message).delivery
    started = time.process_time()
    for _ in range(times):
        with hooks.attempt(delivery):
            pass
        if hooks.active:
            hooks.outcome(row, Outcome.SUCCEEDED, None)
    cpu = time.process_time() - started
    empty(ReceivedMessage, PublishedMessage)  # bench/tables.py
    return cpu / times * 1e6


def sdk_floor_cold(instrument: OpenTelemetry, times: int = 300) -> tuple[float, float]:
    """The same work as :func:`sdk_floor` (span + two histogram points) in one go, timed with
    warm caches (back to back) and with cold ones (8 MB of memory and 50,000 objects touched
    before each, as a handler's ORM work might): what the floor costs depends on the caches."""
    from opentelemetry import trace
    from opentelemetry.trace import SpanKind

    parent = instrument.tracer.start_span("create probe")
    creation = trace.set_span_in_context(parent)
    points = instrument.attributes("probe", "probe-a")
    memory = bytearray(8 * 1024 * 1024)
    objects = [{"n": n, "s": str(n)} for n in range(50_000)]

    def evict() -> None:
        for i in range(0, len(memory), 64):
            memory[i] = (memory[i] + 1) & 255
        sum(o["n"] for o in objects)

    def once() -> int:
        started = time.perf_counter_ns()
        instrument.tracer.start_span("process probe", context=creation,
                                     kind=SpanKind.CONSUMER).end()
        instrument.latency.record(0.01, points)
        instrument.duration.record(0.001, points)
        return time.perf_counter_ns() - started

    warm = statistics.median(once() for _ in range(times)) / 1e3
    cold = []
    for _ in range(times):
        evict()
        cold.append(once())
    parent.end()
    return warm, statistics.median(cold) / 1e3


def sdk_floor(instrument: OpenTelemetry, times: int = 20_000) -> tuple[float, float]:
    """CPU microseconds of the SDK's own work that one delivery needs at the least, measured
    on the same providers without the engine: (one process span with the conventions'
    attributes, a parent and a link, started and ended; two histogram points)."""
    from opentelemetry import trace
    from opentelemetry.trace import Link, SpanKind

    parent = instrument.tracer.start_span("create probe")
    creation = trace.set_span_in_context(parent)
    links = [Link(parent.get_span_context())]
    attributes = {
        "messaging.system": "integration_events", "messaging.operation.type": "process",
        "messaging.operation.name": "process", "messaging.destination.name": "probe",
        "messaging.consumer.group.name": "probe-a", "messaging.message.id": "0" * 36,
        "messaging.integration_events.attempt": 1}
    started = time.process_time()
    for _ in range(times):
        instrument.tracer.start_span("process probe", context=creation, kind=SpanKind.CONSUMER,
                                     links=links, attributes=attributes).end()
    span = (time.process_time() - started) / times * 1e6
    points = instrument.attributes("probe", "probe-a")
    started = time.process_time()
    for _ in range(times):
        instrument.latency.record(0.01, points)
        instrument.duration.record(0.001, points)
    histograms = (time.process_time() - started) / times * 1e6
    parent.end()
    return span, histograms


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--events", type=int, default=500, help="events per round (x 2 groups)")
    parser.add_argument("--split", action="store_true",
                        help="also spans ended at once (not with the pass's others), the "
                             "least a span per attempt can cost (a bare span, nothing else), "
                             "and the SDK's parts alone: traces only, traces on a provider "
                             "with no span processor, metrics only (where the cost goes)")
    args = parser.parse_args()
    from django.test.utils import get_runner, setup_test_environment

    setup_test_environment()
    runner = get_runner(django.conf.settings)(verbosity=0, interactive=False)
    old = runner.setup_databases()
    configs = {
        "API absent": Hooks(),
        "API, no SDK": Hooks([OpenTelemetry()]),
        "SDK, no-op exporter": Hooks([sdk_instrument()]),
    }
    if args.split:
        configs.update(split_configs(configs["SDK, no-op exporter"]))
    names = list(configs)
    results: dict[str, list[float]] = {name: [] for name in names}
    alone: dict[str, list[float]] = {name: [] for name in names
                                     if name in GOALS or name == "API absent"}
    try:
        one_round(configs["SDK, no-op exporter"], 50)  # warm up caches and the SDK
        for r in range(args.rounds):
            # The order rotates every other round and is reversed in between: within each
            # pair of rounds, each configuration runs once before and once after each other
            # one (a round leaves the database and the heap a little different for the next).
            order = names[(r // 2) % len(names):] + names[: (r // 2) % len(names)]
            for name in (order if r % 2 == 0 else order[::-1]):
                results[name].append(one_round(configs[name], args.events))
        for _ in range(3):
            for name in alone:
                alone[name].append(hooks_alone(configs[name]))
        sdk = configs["SDK, no-op exporter"].instruments[0]
        assert isinstance(sdk, OpenTelemetry)
        floors = [sdk_floor(sdk) for _ in range(3)]
        cold = sdk_floor_cold(sdk) if args.split else None
    finally:
        runner.teardown_databases(old)
    print(f"database: {connection.vendor}, {args.rounds} rounds of {2 * args.events} "
          f"deliveries, CPU us per delivery (median)")
    base = results["API absent"]
    failed = False
    for name in names:
        median = statistics.median(results[name])
        line = f"  {name:<26} {median:8.1f} us"
        if name not in GOALS and name != "API absent":
            added = statistics.median(r - b for r, b in zip(results[name], base, strict=True))
            line += f"   added {added:6.1f} us"
        if name in GOALS:
            added = statistics.median(r - b for r, b in zip(results[name], base, strict=True))
            ok = added <= GOALS[name]
            failed |= not ok
            line += f"   added {added:6.1f} us (goal <= {GOALS[name]:g}: " \
                    f"{'met' if ok else 'MISSED'})"
        print(line)
    print("the hooks alone, around one delivery (median of 3 x 20,000)")
    hooks_base = statistics.median(alone["API absent"])
    for name in alone:
        median = statistics.median(alone[name])
        print(f"  {name:<26} {median:8.2f} us   added {median - hooks_base:6.2f} us")
    span = statistics.median(f[0] for f in floors)
    histograms = statistics.median(f[1] for f in floors)
    print("the SDK's own floor per delivery, without the engine (median of 3 x 20,000)")
    print(f"  one process span (7 attributes, parent, link) {span:6.2f} us, two histogram "
          f"points {histograms:6.2f} us: {span + histograms:6.2f} us")
    if cold is not None:
        print(f"  span (no attributes) + two points, median of 300: warm caches {cold[0]:6.1f} "
              f"us, after evicting them {cold[1]:6.1f} us (wall)")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
