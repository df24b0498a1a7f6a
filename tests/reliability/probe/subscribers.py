"""Handlers of the reliability load, in groups rel-a and rel-b.

Each writes an Effect row (its database side effect, committed with its inbox status), and
when IE_REL_JOURNAL names a file, appends "start" and "end" lines to it around the whole run,
outside any transaction, so that overlapping runs of one (message, group) are visible even
when one of them is rolled back.
"""

from __future__ import annotations

import hashlib
import os
import time

from integration_events import MessageContext, subscriber
from tests.eventapp.subscribers import behave  # the same behaviours as the engine tests' probe

from .events import LoadApplied
from .models import Effect
from .topics import ReliabilityTopics


def journal(context: MessageContext, what: str) -> None:
    path = os.environ.get("IE_REL_JOURNAL")
    if not path:
        return
    line = (f"{context.message_id} {context.group} {what} {time.time():.6f} {os.getpid()} "
            f"{os.getpgid(0)}\n")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def handle(event: LoadApplied, context: MessageContext) -> None:
    journal(context, "start")
    try:
        Effect.objects.create(
            message_id=context.message_id, group=context.group, n=event.n,
            attempt=context.attempt, pid=os.getpid(), pgid=os.getpgid(0),
            digest=hashlib.sha256((event.text + event.blob).encode("utf-8", "surrogatepass"))
            .hexdigest(),
        )
        behave(event, context)
    finally:
        journal(context, "end")


@subscriber(ReliabilityTopics.LOAD_APPLIED, group="rel-a")
def rel_a(event: LoadApplied, context: MessageContext) -> None:
    handle(event, context)


@subscriber(ReliabilityTopics.LOAD_APPLIED, group="rel-b")
def rel_b(event: LoadApplied, context: MessageContext) -> None:
    handle(event, context)
