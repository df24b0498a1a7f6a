"""The engine's queries per pass, pinned: 100 deliveries (50 messages to the probe's two
groups) cost 10 queries to dispatch and 115 to execute on every database, as before the
engine was split into modules; 100 of those 115 are the probe handler's own INSERTs.

One exception, the database's own: the 100 inbox rows go in as many INSERTs as the backend's
parameter limit needs (one on all of them but SQLite under Django 5.2, whose 999-parameter
limit takes two for this many columns); and PostgreSQL's claims start with one more
statement (``SET LOCAL jit = off``, integration_events.claims)."""

from __future__ import annotations

import math

import pytest
from django.db import connection
from django.test import override_settings

from integration_events import publish_many
from integration_events.models import ReceivedMessage
from integration_events.worker import Worker
from tests.eventapp.events import ProbeHappened

pytestmark = pytest.mark.django_db(transaction=True)



def inbox_inserts(rows: int = 100) -> int:
    """The INSERT statements the backend needs for ``rows`` inbox rows (Django's batching)."""
    fields = [f for f in ReceivedMessage._meta.concrete_fields if not f.primary_key]
    objs = [ReceivedMessage(group="g", topic="t") for _ in range(rows)]
    return math.ceil(rows / min(500, connection.ops.bulk_batch_size(fields, objs)))


def dispatch_100() -> int:
    """BEGIN, a SELECT per status, the claim UPDATE, COMMIT, the claimed rows; BEGIN, the
    inbox INSERT(s), the completion UPDATE, COMMIT: 10 (asked of the database's backend, so
    only inside a test)."""
    return 9 + inbox_inserts() + claim_setup()


def claim_setup() -> int:
    """The statements a claim runs before its select: PostgreSQL's ``SET LOCAL jit``."""
    return 1 if connection.vendor == "postgresql" else 0


def execute_100() -> int:
    """The claim (6), the messages (1), then per chunk of 50: the attempts UPDATE, BEGIN, 50
    handler INSERTs, the completion UPDATE, COMMIT (2 x 54): 115."""
    return 115 + claim_setup()


# Flow control re-reads the paused groups at most once per POLL_INTERVAL while a pass runs
# (one more query when a pass outlasts it); a long interval keeps this count deterministic.
STEADY = {"NUDGE": False, "POLL_INTERVAL": 60}


def test_queries_per_pass(django_assert_num_queries) -> None:
    with override_settings(INTEGRATION_EVENTS=STEADY):
        publish_many([ProbeHappened(n=n) for n in range(50)])
        worker = Worker(keep_leases=False)
        with django_assert_num_queries(dispatch_100()):
            assert worker.dispatch_batch().dispatched == 50
        with django_assert_num_queries(execute_100()):
            assert worker.execute_batch().succeeded == 100
