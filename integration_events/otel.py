"""OpenTelemetry traces and metrics (the ``[otel]`` extra: the API only; the SDK and an exporter
are the project's choice, see docs/observability.md).

List ``"integration_events.otel.OpenTelemetry"`` (or a subclass that sets up the SDK in
``configure``) in ``INTEGRATION_EVENTS["INSTRUMENTATION"]``.

Spans follow the OpenTelemetry semantic conventions for messaging, version 1.27.0
(``SCHEMA_URL``):

- ``create {topic}`` (PRODUCER) around storing each published message; its context is
  stored in the message's ``traceparent`` / ``tracestate`` headers (W3C Trace Context), the
  message's *creation context*. A message that already carries a creation context of its own
  (e.g. one a broker bridge received) keeps it and gets no create span, as the conventions ask.
- ``process {topic}`` (CONSUMER) around each handler attempt, also a retry hours later: it
  **links** to the creation context (the conventions require the link) and also has it as its
  **parent**, so the request that published, the create span and every attempt of every group
  are one trace. The conventions allow the parent for a span that processes one message; a
  trace that lasts as long as the retries (hours) is the price: a tail-sampling collector
  decides on the first part it sees. The link is kept so that tools that follow links, and
  a trace split by sampling, still find the producer.
- A failed attempt: status ERROR, ``error.type`` and the exception recorded as an event.

Metrics (through the metrics API, per topic and group): ``integration_events.messages.published``
(counted when the publishing transaction commits), ``.delivered``, ``.retried``,
``.dead_lettered``; the ``messaging.process.duration`` histogram (a handler's run); and
``integration_events.publish_to_start.duration``: from the message's ``created_at`` to the start
of its first attempt. It is *publish* to start, not commit to start: on PostgreSQL
``created_at`` is the publishing transaction's start, so a long transaction adds to it.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime
from functools import partial
from importlib import import_module
from typing import TYPE_CHECKING, Any

from django.core.exceptions import ImproperlyConfigured
from django.db import DEFAULT_DB_ALIAS, transaction

from .context import current_context
from .instrumentation import Instrumentation
from .outcomes import Outcome

try:
    from opentelemetry import context as otel_context
    from opentelemetry import metrics, trace
    from opentelemetry.trace import Link, SpanKind, Status, StatusCode
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImproperlyConfigured(
        "integration_events.otel needs the OpenTelemetry API: pip install "
        "'django-integration-events[otel]' (and an SDK to export anything), or remove it from "
        "INTEGRATION_EVENTS['INSTRUMENTATION']."
    ) from exc

if TYPE_CHECKING:
    from .context import Delivery
    from .models import MessageBase, PublishedMessage

SCHEMA_URL = "https://opentelemetry.io/schemas/1.27.0"
SYSTEM = "integration_events"
# System-specific attributes live under messaging.{system} (the conventions' rule).
ATTEMPT = f"messaging.{SYSTEM}.attempt"
HANDLER = f"messaging.{SYSTEM}.handler"
FLUSH_TIMEOUT_MILLIS = 5_000
# Seconds. The conventions' boundaries for messaging durations; the SDK's default ones are
# meant for milliseconds. The latency also needs minutes (a delayed hand-off, a backlog).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                    7.5, 10.0)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                   300.0, 900.0, 3600.0)
# Histogram points handed to the SDK together (OpenTelemetry.point).
POINTS_BATCH = 64
# Nanoseconds a process span's end may wait for the pass's others (OpenTelemetry.end_later).
ENDS_WAIT_NS = 100_000_000
# Without an SDK, how often to look whether one has been set up since.
RECHECK_SECONDS = 1.0

PUBLISHED = "integration_events.messages.published"
DELIVERED = "integration_events.messages.delivered"
RETRIED = "integration_events.messages.retried"
DEAD_LETTERED = "integration_events.messages.dead_lettered"
PROCESS_DURATION = "messaging.process.duration"
PUBLISH_TO_START = "integration_events.publish_to_start.duration"

_PROPAGATOR = TraceContextTextMapPropagator()
_NOT_RECORDING = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)
# The API's stand-in until an SDK sets a meter provider is private, hence getattr.
_NOT_METERING: tuple[type, ...] = tuple(
    t for t in (getattr(import_module("opentelemetry.metrics._internal"), "_ProxyMeterProvider",
                        None), metrics.NoOpMeterProvider) if isinstance(t, type))


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("django-integration-events")
    except PackageNotFoundError:  # pragma: no cover - a source tree that is not installed
        return "0"


class OpenTelemetry(Instrumentation):
    """Spans and metrics through the OpenTelemetry API.

    ``tracer_provider`` / ``meter_provider``: None uses the global ones (what the SDK's
    ``set_tracer_provider`` sets). Subclass and override :meth:`configure` to set up the SDK
    in each process (web and worker) before its first span.
    """

    def __init__(self, tracer_provider: Any = None, meter_provider: Any = None) -> None:
        self._tracer_provider = tracer_provider
        self._meter_provider = meter_provider
        self._pid: int | None = None
        # Once an SDK provider is in place it stays (the API sets a global one only once);
        # until then the global ones are looked at again at most once per RECHECK_SECONDS.
        self._tracing = False
        self._metering = False
        self._checked = float("-inf")
        version = _version()
        self.tracer = trace.get_tracer(__name__, version, tracer_provider,
                                       schema_url=SCHEMA_URL)
        meter = metrics.get_meter(__name__, version, meter_provider, schema_url=SCHEMA_URL)
        # The counters are counted here and observed by the SDK when it collects
        # (asynchronous counters): a dict increment per message instead of the SDK's
        # synchronous path, which costs about ten microseconds a call.
        self._counts: dict[str, dict[tuple[str, str], int]] = {
            name: {} for name in (PUBLISHED, DELIVERED, RETRIED, DEAD_LETTERED)}
        for name, description in (
                (PUBLISHED, "Messages stored in the outbox (counted at commit)"),
                (DELIVERED, "Handler runs recorded as succeeded (counted when the outcome "
                             "is written, before its transaction commits)"),
                (RETRIED, "Failed attempts that will be tried again"),
                (DEAD_LETTERED, "Messages that failed for the last time (dead letters)")):
            meter.create_observable_counter(name, [partial(self._observe, name)],
                                            "{message}", description)
        self.duration = meter.create_histogram(
            PROCESS_DURATION, "s", "Duration of one handler run (one attempt)",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS)
        self.latency = meter.create_histogram(
            PUBLISH_TO_START, "s",
            "From the message's created_at (on PostgreSQL: its publishing transaction's "
            "start) to the start of its first attempt",
            explicit_bucket_boundaries_advisory=LATENCY_BUCKETS)
        self._attrs: dict[tuple[str, str], dict[str, str]] = {}
        self._lock = threading.Lock()
        # Histogram points waiting to be handed to the SDK, a run of them at a time (see
        # point()); appended by the worker's thread, emptied by it or the SDK's collector.
        self._points: deque[tuple[Any, float, dict[str, str], Any]] = deque()
        # Process spans whose handler has returned, with their end time (ns), to be ended
        # together at the end of the pass (see end_later()).
        self._ends: deque[tuple[Any, int]] = deque()

    # --- per process ------------------------------------------------------------------------

    def configure(self) -> None:
        """Set up the SDK for this process (called once per process, before its first hook:
        in each forked worker at start, in a web process at its first publish). The default
        does nothing: the global providers are used as they are."""

    def _ensure_configured(self) -> None:
        pid = os.getpid()
        if self._pid != pid:
            if self._pid is not None:
                # A forked child: what the parent counted is the parent's to report, and a
                # lock held by one of the parent's threads at the fork would stay held.
                self._lock = threading.Lock()
                for counts in self._counts.values():
                    counts.clear()
                self._points.clear()
                self._ends.clear()
            self._pid = pid
            self.configure()
            self._checked = float("-inf")  # configure() may have set the SDK up: look again

    def process_started(self) -> None:
        self._ensure_configured()

    def task_finished(self) -> None:
        """Flush spans and metrics: a forked worker that is recycled or killed never runs
        the SDK's exit handler, so what is still buffered would be lost."""
        self.end_spans()
        self.flush_points()
        for provider in (self.tracer_provider(), self.meter_provider()):
            flush = getattr(provider, "force_flush", None)
            if flush is not None:
                flush(FLUSH_TIMEOUT_MILLIS)

    def tracer_provider(self) -> Any:
        return self._tracer_provider or trace.get_tracer_provider()

    def meter_provider(self) -> Any:
        return self._meter_provider or metrics.get_meter_provider()

    def tracing(self) -> bool:
        """True if spans are recorded (an SDK is set up); without one the span work is
        skipped altogether."""
        if not self._tracing:
            self._look_for_sdk()
        return self._tracing

    def metering(self) -> bool:
        """True if an SDK meter provider is set up; without one no measurement is taken."""
        if not self._metering:
            self._look_for_sdk()
        return self._metering

    def _look_for_sdk(self) -> None:
        # Asking the API for the global providers costs about a microsecond each; without
        # an SDK that would be most of this instrumentation's cost per delivery.
        now = time.monotonic()
        if now - self._checked < RECHECK_SECONDS:
            return
        self._checked = now
        self._tracing = not isinstance(self.tracer_provider(), _NOT_RECORDING)
        self._metering = not isinstance(self.meter_provider(), _NOT_METERING)

    def count(self, name: str, topic: str, group: str = "") -> None:
        """Add one to the counter ``name`` for (topic, group)."""
        counts = self._counts[name]
        key = (topic, group)
        with self._lock:  # a web process publishes from several threads
            counts[key] = counts.get(key, 0) + 1

    def point(self, histogram: Any, value: float, attributes: dict[str, str],
              context: Any) -> None:
        """Record a histogram point, handed to the SDK with the next POINTS_BATCH ones (or
        when the SDK collects, or the task ends). The SDK's record() runs many times faster
        back to back than between handler runs that have evicted it from the CPU's caches;
        ``context`` is the one current at the measurement (for exemplars)."""
        points = self._points
        points.append((histogram, value, attributes, context))
        if len(points) >= POINTS_BATCH:
            self.flush_points()

    def end_later(self, span: Any) -> None:
        """End ``span`` as of now, together with the other spans of the pass: when the pass
        is over (pass_finished), when POINTS_BATCH wait, or before a handler starts once
        the first has waited ENDS_WAIT_NS (end_overdue), whichever comes first. Ending a span
        hands a copy of it to the span processor, which like record() runs much faster back
        to back than between handler runs. Its end time is now's; it is no longer current."""
        ends = self._ends
        ends.append((span, time.time_ns()))
        if len(ends) >= POINTS_BATCH:
            self.end_spans()

    def end_overdue(self) -> None:
        try:
            first = self._ends[0][1]
        except IndexError:  # none waits (or another thread has just ended them)
            return
        if time.time_ns() - first >= ENDS_WAIT_NS:
            self.end_spans()

    def end_spans(self) -> None:
        _drain(self._ends, _end_span)

    def pass_finished(self) -> None:
        self.end_spans()

    def flush_points(self) -> None:
        _drain(self._points, _record_point)

    def _observe(self, name: str, options: Any) -> list[Any]:
        self.flush_points()  # the SDK is collecting: the buffered points first
        with self._lock:
            items = list(self._counts[name].items())
        return [metrics.Observation(n, self.attributes(topic, group))
                for (topic, group), n in items]

    def attributes(self, topic: str, group: str = "") -> dict[str, str]:
        """The metric attributes of a topic (and group), built once. (``messaging.system``
        is left out: it is the same on every point, and each attribute costs on every
        measurement.)"""
        key = (topic, group)
        attrs = self._attrs.get(key)
        if attrs is None:
            attrs = {"messaging.destination.name": topic} if topic else {}
            if group:
                attrs["messaging.consumer.group.name"] = group
            self._attrs[key] = attrs
        return attrs

    # --- the hooks ----------------------------------------------------------------------------

    def publish(self, message: PublishedMessage, event: Any) -> AbstractContextManager[None]:
        self._ensure_configured()
        tracing, metering = self.tracing(), self.metering()
        if not (tracing or metering):
            return _NOTHING
        return _CreateSpan(self, message, tracing, metering)

    def attempt(self, delivery: Delivery) -> AbstractContextManager[None]:
        self._ensure_configured()
        tracing, metering = self.tracing(), self.metering()
        if not (tracing or metering):
            return _NOTHING
        return _ProcessSpan(self, delivery, tracing, metering)

    def batch(self, group: str, deliveries: Sequence[Delivery],
              results: list[BaseException | None]) -> AbstractContextManager[None]:
        self._ensure_configured()
        tracing, metering = self.tracing(), self.metering()
        if not (tracing or metering) or not deliveries:
            return _NOTHING
        return _BatchSpan(self, group, deliveries, results, tracing, metering)

    def outcome(self, row: MessageBase, outcome: Outcome, error: BaseException | None) -> None:
        counter = _COUNTERS.get(outcome)
        if counter is not None and self.metering():
            self.count(counter, getattr(row, "topic", ""), getattr(row, "group", ""))


def _drain(queue: deque[Any], apply: Callable[..., None]) -> None:
    """``apply(*item)`` to each item of ``queue``, oldest first, until it is empty (other
    threads may take from it meanwhile: each item is applied once)."""
    while True:
        try:
            item = queue.popleft()
        except IndexError:
            return
        apply(*item)


def _end_span(span: Any, at: int) -> None:
    span.end(at)


def _record_point(histogram: Any, value: float, attributes: dict[str, str],
                  context: Any) -> None:
    histogram.record(value, attributes, context)


_COUNTERS = {Outcome.SUCCEEDED: DELIVERED, Outcome.RETRIED: RETRIED,
             Outcome.FAILED: DEAD_LETTERED}


# The context when neither spans nor metrics are recorded (no SDK): no work at all.
_NOTHING: AbstractContextManager[None] = nullcontext()


def _record_error(span: Any, error: BaseException) -> None:
    span.set_attribute("error.type", type(error).__qualname__)
    span.record_exception(error)
    span.set_status(Status(StatusCode.ERROR, f"{type(error).__qualname__}: {error}"[:500]))


class _CreateSpan:
    """The create span around one outbox INSERT; its context goes into the headers."""

    __slots__ = ("owner", "message", "span", "tracing", "metering")

    def __init__(self, owner: OpenTelemetry, message: PublishedMessage, tracing: bool,
                 metering: bool) -> None:
        self.owner = owner
        self.message = message
        self.span: Any = None
        self.tracing = tracing
        self.metering = metering

    def __enter__(self) -> None:
        owner, message = self.owner, self.message
        if not self.tracing or _has_own_creation_context(message.headers):
            return
        topic = message.topic
        # Not made current: publish_many enters one of these per message, and they are
        # siblings under the caller's span, not nested.
        self.span = owner.tracer.start_span(
            f"create {topic}", kind=SpanKind.PRODUCER, attributes={
                "messaging.system": SYSTEM, "messaging.operation.type": "create",
                "messaging.operation.name": "create", "messaging.destination.name": topic,
                "messaging.message.id": str(message.id),
                "messaging.message.conversation_id": str(message.correlation_id),
            })
        headers = message.headers
        headers.pop("traceparent", None)  # the parent message's, copied by publish()
        headers.pop("tracestate", None)
        _PROPAGATOR.inject(headers, context=trace.set_span_in_context(self.span))

    def __exit__(self, kind: Any, error: BaseException | None, tb: Any) -> None:
        if self.span is not None:
            if error is not None:
                _record_error(self.span, error)
            self.span.end()
        if error is None and self.metering:
            owner, message = self.owner, self.message
            transaction.on_commit(partial(owner.count, PUBLISHED, message.topic),
                                  using=message._state.db or DEFAULT_DB_ALIAS, robust=True)


def _has_own_creation_context(headers: dict[str, Any]) -> bool:
    """True if the caller stored a creation context itself (headers=..., or a bridge that
    received one): the conventions say to keep it and create no span. A ``traceparent``
    that publish() copied from the message being handled is the parent's, not this one's."""
    own = headers.get("traceparent")
    if not own:
        return False
    ctx = current_context.get()
    return ctx is None or own != ctx.traceparent


class _ProcessSpan:
    """The process span and the duration of one handler attempt."""

    __slots__ = ("owner", "delivery", "span", "token", "started", "tracing", "metering")

    def __init__(self, owner: OpenTelemetry, delivery: Delivery, tracing: bool,
                 metering: bool) -> None:
        self.owner = owner
        self.delivery = delivery
        self.span: Any = None
        self.token: Any = None
        self.started = 0.0
        self.tracing = tracing
        self.metering = metering

    def __enter__(self) -> None:
        owner, delivery = self.owner, self.delivery
        ctx = delivery.context
        if self.tracing:
            owner.end_overdue()
        if self.metering and ctx.attempt == 1:
            created = delivery.message.created_at
            if isinstance(created, datetime):
                owner.point(owner.latency, max(0.0, time.time() - created.timestamp()),
                            owner.attributes(ctx.topic, ctx.group), otel_context.get_current())
        if self.tracing:
            creation, linked = _creation_context(delivery)
            self.span = owner.tracer.start_span(
                f"process {ctx.topic}", context=creation, kind=SpanKind.CONSUMER,
                links=linked, attributes={
                    "messaging.system": SYSTEM, "messaging.operation.type": "process",
                    "messaging.operation.name": "process",
                    "messaging.destination.name": ctx.topic,
                    "messaging.consumer.group.name": ctx.group,
                    "messaging.message.id": str(ctx.message_id), ATTEMPT: ctx.attempt,
                })
            # Current while the handler runs: its database calls, HTTP calls and the create
            # spans of what it publishes are the process span's children.
            self.token = otel_context.attach(trace.set_span_in_context(self.span))
        self.started = time.perf_counter()

    def __exit__(self, kind: Any, error: BaseException | None, tb: Any) -> None:
        elapsed = time.perf_counter() - self.started
        if self.metering:
            owner, ctx = self.owner, self.delivery.context
            attrs = owner.attributes(ctx.topic, ctx.group)
            if error is not None:
                attrs = {**attrs, "error.type": type(error).__qualname__}
            owner.point(owner.duration, elapsed, attrs, otel_context.get_current())
        if self.span is not None:
            if error is not None:
                _record_error(self.span, error)
            otel_context.detach(self.token)
            self.owner.end_later(self.span)


class _BatchSpan:
    """One process span around a batch handler's call for many deliveries of one group (the
    conventions' batch processing: no parent, a link to each message's creation context,
    ``messaging.batch.message_count``), and one duration point for the call."""

    __slots__ = ("owner", "group", "deliveries", "results", "span", "started", "tracing",
                 "metering", "topic")

    def __init__(self, owner: OpenTelemetry, group: str, deliveries: Sequence[Delivery],
                 results: list[BaseException | None], tracing: bool, metering: bool) -> None:
        self.owner, self.group, self.deliveries, self.results = owner, group, deliveries, results
        self.tracing, self.metering = tracing, metering
        self.span: Any = None
        self.started = 0.0
        topics = {d.context.topic for d in deliveries}
        # The destination only when the whole batch has one (the conventions' rule).
        self.topic = topics.pop() if len(topics) == 1 else ""

    def __enter__(self) -> None:
        owner = self.owner
        if self.metering:
            now, current = time.time(), otel_context.get_current()
            for delivery in self.deliveries:
                ctx, created = delivery.context, delivery.message.created_at
                if ctx.attempt == 1 and isinstance(created, datetime):
                    owner.point(owner.latency, max(0.0, now - created.timestamp()),
                                owner.attributes(ctx.topic, ctx.group), current)
        if self.tracing:
            links = [link for d in self.deliveries for link in (_creation_context(d)[1] or ())]
            attributes: dict[str, Any] = {
                "messaging.system": SYSTEM, "messaging.operation.type": "process",
                "messaging.operation.name": "process", "messaging.consumer.group.name": self.group,
                "messaging.batch.message_count": len(self.deliveries)}
            if self.topic:
                attributes["messaging.destination.name"] = self.topic
            # A new trace (empty context): the batch's messages come from many traces.
            self.span = owner.tracer.start_span(
                f"process {self.topic}" if self.topic else "process",
                context=otel_context.Context(), kind=SpanKind.CONSUMER, links=links,
                attributes=attributes)
        self.started = time.perf_counter()

    def __exit__(self, kind: Any, error: BaseException | None, tb: Any) -> None:
        elapsed = time.perf_counter() - self.started
        failed = [e for e in self.results if e is not None] if error is None else [error]
        if self.metering:
            attrs = self.owner.attributes(self.topic, self.group)
            if failed:
                attrs = {**attrs, "error.type": type(failed[0]).__qualname__}
            context = (trace.set_span_in_context(self.span) if self.span is not None
                       else otel_context.get_current())
            self.owner.point(self.owner.duration, elapsed, attrs, context)
        if self.span is not None:
            if error is not None:
                _record_error(self.span, error)
            elif failed:
                first = failed[0]
                self.span.set_attribute("error.type", type(first).__qualname__)
                self.span.set_status(Status(StatusCode.ERROR, (
                    f"{len(failed)} of {len(self.deliveries)} deliveries failed, the first: "
                    f"{type(first).__qualname__}: {first}")[:500]))
            self.span.end()


# The creation context read from a message's headers, kept on the message object for the
# other groups' deliveries of the same message in the same claim (they share the object).
_CREATION = "_integration_events_creation_context"


def _creation_context(delivery: Delivery) -> tuple[Any, list[Any] | None]:
    """(parent context, links) of a process span: the message's creation context as both,
    or (None, None) for a message that has none (a new trace)."""
    message = delivery.message
    cached = message.__dict__.get(_CREATION)
    if cached is None:
        creation = _PROPAGATOR.extract(delivery.context.headers)
        linked = trace.get_current_span(creation).get_span_context()
        cached = (creation, [Link(linked)]) if linked.is_valid else (None, None)
        message.__dict__[_CREATION] = cached
    return cached
