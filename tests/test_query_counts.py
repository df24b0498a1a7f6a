"""The engine's queries per pass, pinned (they were 10 for a dispatch pass of 100 messages
and 115 for an execute pass of 100 deliveries, on every database, before the engine was split
into modules; 100 of those 115 are the probe handler's own INSERTs)."""

from __future__ import annotations

import pytest
from django.test import override_settings

from integration_events import publish_many
from integration_events.worker import Worker
from tests.eventapp.events import ProbeHappened

pytestmark = pytest.mark.django_db(transaction=True)

# BEGIN, a SELECT per status, the claim UPDATE, COMMIT, the claimed rows; BEGIN, the inbox
# INSERT, the completion UPDATE, COMMIT.
DISPATCH_100 = 10
# The claim (6), the messages (1), then per chunk of 50: the attempts UPDATE, BEGIN, 50
# handler INSERTs, the completion UPDATE, COMMIT (2 x 54).
EXECUTE_100 = 115


def test_queries_per_pass(django_assert_num_queries) -> None:
    with override_settings(INTEGRATION_EVENTS={"NUDGE": False}):
        publish_many([ProbeHappened(n=n) for n in range(100)])
    worker = Worker(keep_leases=False)
    with django_assert_num_queries(DISPATCH_100):
        assert worker.dispatch_batch().dispatched == 100
    with django_assert_num_queries(EXECUTE_100):
        assert worker.execute_batch().succeeded == 100
