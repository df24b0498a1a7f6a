"""The poison rule with a real qcluster: each kind of bad row among 150 good events fails
alone, with a reason that starts with its kind, and costs the good ones nothing."""

from __future__ import annotations

import pytest
from django.db import transaction
from django.test import override_settings
from django.utils import timezone

from integration_events import publish
from integration_events.models import MessageStatus, PublishedMessage, ReceivedMessage
from tests.conftest import wait_for
from tests.eventapp.events import ProbeHappened, Stamped
from tests.eventapp.models import Delivery
from tests.test_dispatch import DEEP

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.cluster]

MAX_ATTEMPTS = 3


def test_bad_rows_fail_alone_under_a_real_cluster(cluster) -> None:
    c = cluster(IE_MAX_ATTEMPTS=str(MAX_ATTEMPTS), IE_RETRY_BASE_DELAY="0.2")
    with override_settings(INTEGRATION_EVENTS={"NUDGE": True}), transaction.atomic():
        good, bad = [], {}
        for n in range(150):
            good.append(publish(ProbeHappened(n=n)).pk)
            if n % 25 == 10:  # bad rows among the good ones, two of each kind
                headers = publish(ProbeHappened(n=1000 + n))
                PublishedMessage.objects.filter(pk=headers.pk).update(headers=["x"])
                bad[headers.pk] = ("received", "InvalidHeaders:")
                deep = publish(ProbeHappened(n=2000 + n))
                PublishedMessage.objects.filter(pk=deep.pk).update(content=DEEP)
                bad[deep.pk] = ("published", "InvalidMessage:")
                stamped = publish(Stamped(n=3000 + n, at=timezone.now()))
                bad[stamped.pk] = ("received", "AttributeError:")
    wait_for(lambda: Delivery.objects.filter(message_id__in=good).count() >= 300, 15,
             "all 300 good deliveries within 15 s", c.log)

    def bad_rows_done() -> bool:
        for pk, (where, _) in bad.items():
            qs = (PublishedMessage.objects.filter(pk=pk) if where == "published"
                  else ReceivedMessage.objects.filter(message_id=pk))
            if not qs.exists() or qs.exclude(status=MessageStatus.FAILED).exists():
                return False
        return True

    wait_for(bad_rows_done, 30, "every bad row failed", c.log)
    for pk, (where, kind) in bad.items():
        qs = (PublishedMessage.objects.filter(pk=pk) if where == "published"
              else ReceivedMessage.objects.filter(message_id=pk))
        for row in qs:
            assert row.last_error.startswith(kind), (kind, row.last_error[:200])
    assert Delivery.objects.filter(message_id__in=good).count() == 300, "each exactly once"
    for model in (PublishedMessage, ReceivedMessage):
        assert not model.objects.filter(attempts__gt=MAX_ATTEMPTS).exists()
