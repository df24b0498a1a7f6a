from __future__ import annotations

import os
import time
from typing import Any

from django.db import transaction

from integration_events import MessageContext, publish, subscriber

from .events import (
    ChainLinked,
    CommitChained,
    Limited,
    Paced,
    PacedFast,
    Pausable,
    ProbeHappened,
    Rated,
    Stamped,
    Stepped,
)
from .models import Delivery, Run, Step
from .topics import ProbeTopics


class ProbeBaseException(BaseException):
    """Not an Exception: the worker must still record it against the message."""


def behave(event: Any, context: MessageContext) -> None:
    """Act on ``event.behaviour`` (any event with n, behaviour and only_group fields)."""
    if event.only_group and event.only_group != context.group:
        return
    kind, _, arg = event.behaviour.partition(":")
    if kind == "fail" and (not arg or context.attempt <= int(arg)):
        raise RuntimeError(f"probe {event.n} fails on attempt {context.attempt}")
    if kind == "permanent":
        from integration_events.exceptions import PermanentFailure

        raise PermanentFailure(f"probe {event.n} can never be processed")
    if kind == "sleep":
        time.sleep(float(arg))
    if kind == "hang":
        time.sleep(3600)
    if kind == "exit":
        os._exit(3)
    if kind == "base":
        raise ProbeBaseException(f"probe {event.n} raises a BaseException")


def record(event: ProbeHappened, context: MessageContext) -> None:
    Delivery.objects.create(
        message_id=context.message_id, group=context.group, n=event.n, attempt=context.attempt,
        correlation_id=context.correlation_id,
        correlation_sequence=context.correlation_sequence,
    )


@subscriber(ProbeTopics.PROBE_HAPPENED, group="probe-a")
def probe_a(event: ProbeHappened, context: MessageContext) -> None:
    record(event, context)
    behave(event, context)


@subscriber(ProbeTopics.PROBE_HAPPENED, group="probe-b")
def probe_b(event: ProbeHappened, context: MessageContext) -> None:
    record(event, context)
    behave(event, context)


@subscriber(ProbeTopics.CHAIN_LINKED)
def extend_chain(event: ChainLinked, context: MessageContext) -> None:
    """Publishes the next link for ever: the hop limit must stop it."""
    Delivery.objects.create(
        message_id=context.message_id, group=context.group, n=event.depth,
        attempt=context.attempt, correlation_id=context.correlation_id,
        correlation_sequence=context.correlation_sequence,
    )
    publish(ChainLinked(depth=event.depth + 1))


@subscriber(ProbeTopics.STAMPED, group="probe-a")
def stamped(event: Stamped, context: MessageContext) -> None:
    record(event, context)


@subscriber(ProbeTopics.COMMIT_CHAINED)
def extend_chain_on_commit(event: CommitChained, context: MessageContext) -> None:
    """Publishes the next link after its transaction commits, for ever (until MAX_HOPS)."""
    Delivery.objects.create(
        message_id=context.message_id, group=context.group, n=event.depth,
        attempt=context.attempt, correlation_id=context.correlation_id,
        correlation_sequence=context.correlation_sequence,
    )
    transaction.on_commit(
        lambda: publish(CommitChained(depth=event.depth + 1, label=event.label))
    )


def journal(event: Paced, context: MessageContext) -> None:
    started = time.time()
    if event.sleep:
        time.sleep(event.sleep)
    Run.objects.create(group=context.group, n=event.n, started=started, ended=time.time(),
                       pid=os.getpid())


@subscriber(ProbeTopics.PACED_SLOW, group="paced-slow")
def paced_slow(event: Paced, context: MessageContext) -> None:
    journal(event, context)


@subscriber(ProbeTopics.PACED_FAST, group="paced-fast")
def paced_fast(event: PacedFast, context: MessageContext) -> None:
    journal(event, context)


@subscriber(ProbeTopics.LIMITED, group="limited", max_concurrency=2)
def limited(event: Limited, context: MessageContext) -> None:
    journal(event, context)


@subscriber(ProbeTopics.RATED, group="rated", rate_limit="20/s")
def rated(event: Rated, context: MessageContext) -> None:
    journal(event, context)


@subscriber(ProbeTopics.PAUSABLE, group="pausable")
def pausable(event: Pausable, context: MessageContext) -> None:
    journal(event, context)


def step(event: Stepped, context: MessageContext) -> None:
    Step.objects.create(group=context.group, key=event.key, step=event.step,
                        message_id=context.message_id, attempt=context.attempt,
                        publisher=event.publisher, pid=os.getpid())
    behave(event, context)


@subscriber(ProbeTopics.STEPPED, group="steps-a")
def steps_a(event: Stepped, context: MessageContext) -> None:
    step(event, context)


@subscriber(ProbeTopics.STEPPED, group="steps-b")
def steps_b(event: Stepped, context: MessageContext) -> None:
    step(event, context)
