"""Instrumentation hooks around publish, dispatch and each attempt (the tracing seam).

Subclass :class:`Instrumentation`, override the hooks you need, and list the class in
``INTEGRATION_EVENTS["INSTRUMENTATION"]`` (dotted paths; instantiated once per settings).
Every hook runs in the process and thread that does the work: ``publish`` in the publisher's
request, the others in the worker. With none configured the engine skips the hooks.

Two hooks are about the cluster's processes rather than messages: ``process_started`` runs in
each worker process a ``qcluster`` forks (django-q2's ``post_spawn``; workers are forked again
when recycled), before its first task, to set up what must not be shared across a fork (an
exporter's thread and connection); ``task_finished`` runs when each django-q2 task of the
engine ends, to flush what is buffered (a forked worker leaves without running ``atexit``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

from django.utils.module_loading import import_string

from .conf import IntegrationEventsSettings, get_settings

if TYPE_CHECKING:
    from .context import Delivery
    from .models import MessageBase, PublishedMessage
    from .outcomes import Outcome


class Instrumentation:
    """Hooks with no effect; override any of them.

    Contract: hooks must be cheap and must not raise, except ``attempt``'s enter, where an
    exception fails the attempt exactly as if the handler had raised it.
    """

    def publish(self, message: PublishedMessage, event: Any) -> AbstractContextManager[None]:
        """Around storing one published message. ``message.headers`` may still be changed
        (e.g. to add ``traceparent``): the row is written inside this context."""
        return nullcontext()

    def dispatch(self, message: PublishedMessage, groups: Sequence[str]
                 ) -> AbstractContextManager[None]:
        """Around fanning one message out to ``groups`` (empty: nobody subscribes)."""
        return nullcontext()

    def attempt(self, delivery: Delivery) -> AbstractContextManager[None]:
        """Around one handler run (``delivery.context.attempt`` is the attempt number). The
        handler's exception, if any, passes through this context's exit."""
        return nullcontext()

    def batch(self, group: str, deliveries: Sequence[Delivery],
              results: list[BaseException | None]) -> AbstractContextManager[None]:
        """Around one call of a batch handler (a run-time group's, e.g. a broker bridge's
        sender) for ``deliveries``, all of ``group``. The handler's own exception passes
        through this context's exit; otherwise the engine has filled ``results`` with what
        the handler reported for each delivery (None: done) before the context exits. Each
        row's outcome is reported through ``outcome`` afterwards, as for single handlers."""
        return nullcontext()

    def outcome(self, row: MessageBase, outcome: Outcome, error: BaseException | None) -> None:
        """After an outcome was written for ``row`` (before its transaction commits; for a
        lease the sweep found expired, with the sweep's own LeaseExpired error)."""

    def pass_finished(self) -> None:
        """After each execution pass of a worker (a claim's handlers run and their outcomes
        written), in the thread that ran it (a cluster's task, an extra claimer's thread,
        ``deliver_pending``, a management command): hand on what was kept back to be handed
        on together, e.g. spans to end."""

    def process_started(self) -> None:
        """In a new worker process of the cluster, before its first task (django-q2's
        ``post_spawn``; also after a worker is recycled)."""

    def task_finished(self) -> None:
        """When a task of the cluster (processing or the minute sweep) has ended, in its
        worker process: flush buffered telemetry here."""


class Hooks:
    """The configured instrumentations, called together (in order; exits in reverse)."""

    def __init__(self, instruments: Sequence[Instrumentation] = ()) -> None:
        self.instruments = tuple(instruments)
        self.active = bool(self.instruments)
        # The common case, one instrumentation: its contexts are used as they are (an
        # ExitStack around them costs a few microseconds per delivery).
        self._only = self.instruments[0] if len(self.instruments) == 1 else None

    def publish(self, message: PublishedMessage, event: Any) -> AbstractContextManager[None]:
        if not self.active:
            return nullcontext()
        if self._only is not None:
            return self._only.publish(message, event)
        return self._all(i.publish(message, event) for i in self.instruments)

    def dispatch(self, message: PublishedMessage, groups: Sequence[str]
                 ) -> AbstractContextManager[None]:
        if not self.active:
            return nullcontext()
        if self._only is not None:
            return self._only.dispatch(message, groups)
        return self._all(i.dispatch(message, groups) for i in self.instruments)

    def attempt(self, delivery: Delivery) -> AbstractContextManager[None]:
        if not self.active:
            return nullcontext()
        if self._only is not None:
            return self._only.attempt(delivery)
        return self._all(i.attempt(delivery) for i in self.instruments)

    def batch(self, group: str, deliveries: Sequence[Delivery],
              results: list[BaseException | None]) -> AbstractContextManager[None]:
        if not self.active:
            return nullcontext()
        if self._only is not None:
            return self._only.batch(group, deliveries, results)
        return self._all(i.batch(group, deliveries, results) for i in self.instruments)

    def outcome(self, row: MessageBase, outcome: Outcome, error: BaseException | None) -> None:
        for instrument in self.instruments:
            instrument.outcome(row, outcome, error)

    def pass_finished(self) -> None:
        for instrument in self.instruments:
            instrument.pass_finished()

    def process_started(self) -> None:
        for instrument in self.instruments:
            instrument.process_started()

    def task_finished(self) -> None:
        for instrument in self.instruments:
            instrument.task_finished()

    @staticmethod
    @contextmanager
    def _all(contexts: Any) -> Iterator[None]:
        with ExitStack() as stack:
            for context in contexts:
                stack.enter_context(context)
            yield


_memo: tuple[IntegrationEventsSettings, Hooks] | None = None


def get_hooks() -> Hooks:
    """The hooks of INTEGRATION_EVENTS["INSTRUMENTATION"], built once per settings object."""
    global _memo
    settings = get_settings()
    if _memo is None or _memo[0] is not settings:
        instruments = [_load(item) for item in settings.INSTRUMENTATION]
        _memo = (settings, Hooks(instruments))
    return _memo[1]


def _load(item: Any) -> Instrumentation:
    target = import_string(item) if isinstance(item, str) else item
    instance = target() if isinstance(target, type) else target
    return instance
