"""The naive design the engine is measured against: one django-q2 task per delivery.

The publisher writes the outbox row and one inbox row per group in its transaction and, after
commit, calls ``async_task`` once per delivery. Each task loads its inbox row and message,
validates the payload, and runs the same probe handler as the engine, in one transaction with
the inbox row's move to succeeded (the same guarantee 2). bench/run.py drives it; the inbox rows
are created as "processing" under a lease that never expires, so the engine leaves them alone.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.db import transaction
from django.db.models import F
from django.db.models.functions import Now

HANDLERS = {"probe-a": "probe_a", "probe-b": "probe_b"}


def deliver(pk: int) -> None:
    """The task: one delivery, one transaction."""
    from integration_events import MessageContext
    from integration_events.models import MessageStatus, ReceivedMessage
    from tests.eventapp import subscribers
    from tests.eventapp.events import ProbeHappened

    row = ReceivedMessage.objects.select_related("message").get(pk=pk)
    message = row.message
    event = ProbeHappened.model_validate_json(message.content)
    context = MessageContext(
        message_id=message.pk, topic=row.topic, group=row.group, attempt=row.attempts + 1,
        correlation_id=message.correlation_id,
        correlation_sequence=message.correlation_sequence,
        headers={**message.message_headers, "group": row.group},
    )
    with transaction.atomic():
        getattr(subscribers, HANDLERS[row.group])(event, context)
        ReceivedMessage.objects.filter(pk=pk).update(
            status=MessageStatus.SUCCEEDED, finished_at=Now(), attempts=F("attempts") + 1,
            lease_token=None, lease_until=None,
        )


def publish_naive(first: int, count: int) -> list[int]:
    """Write ``count`` outbox rows and their inbox rows in the caller's transaction, the inbox
    rows parked where the engine never claims them; returns the inbox pks to enqueue."""
    from datetime import timedelta

    from django.utils import timezone

    from integration_events.models import MessageStatus, PublishedMessage, ReceivedMessage, uuid7
    from tests.eventapp.events import ProbeHappened

    far = timezone.now() + timedelta(days=1)
    messages = [
        PublishedMessage(id=uuid7(), topic=ProbeHappened.topic,
                         content=ProbeHappened(n=first + i).model_dump_json(),
                         headers={"sent-at": timezone.now().isoformat()},
                         correlation_id=uuid7(), status=MessageStatus.SUCCEEDED)
        for i in range(count)
    ]
    PublishedMessage.objects.bulk_create(messages)
    token = uuid.uuid4()
    inbox = [
        ReceivedMessage(message_id=m.pk, group=group, topic=m.topic,
                        status=MessageStatus.PROCESSING, lease_token=token, lease_until=far)
        for m in messages for group in HANDLERS
    ]
    ReceivedMessage.objects.bulk_create(inbox)
    if inbox and inbox[0].pk is None:  # a backend without RETURNING
        return list(ReceivedMessage.objects.filter(lease_token=token).values_list("pk", flat=True))
    return [r.pk for r in inbox]


def enqueue(pks: list[int], options: dict[str, Any]) -> None:
    from django_q.tasks import async_task

    for pk in pks:
        async_task("bench.naive.deliver", pk, q_options=options)
