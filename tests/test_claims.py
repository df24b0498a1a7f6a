"""Claims under real concurrency: threads with their own connections, started together.

Marked ``dbspecific``: the CI runs these on MariaDB too (the rest of the suite on SQLite
and PostgreSQL).
"""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
from django.db import connection, connections, transaction

from integration_events import publish_many
from integration_events.claims import OldestFirst, claim
from integration_events.models import MessageStatus, PublishedMessage, ReceivedMessage
from integration_events.worker import Worker
from tests.conftest import claim_rows, requires_row_locks
from tests.eventapp.events import ProbeHappened
from tests.eventapp.models import Delivery

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.dbspecific]


def run_threads(count: int, target) -> list[BaseException]:
    barrier = threading.Barrier(count)
    errors: list[BaseException] = []

    def body(index: int) -> None:
        try:
            barrier.wait(timeout=30)
            target(index)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=body, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return errors


def test_concurrent_claimers_never_take_the_same_row() -> None:
    publish_many([ProbeHappened(n=n) for n in range(600)])
    claimed: list[list[object]] = [[] for _ in range(4)]

    def claim_all(index: int) -> None:
        while True:
            rows = claim_rows(PublishedMessage, 7, count_attempt=True)
            if not rows:
                return
            claimed[index].extend(r.pk for r in rows)

    errors = run_threads(4, claim_all)
    assert not errors, errors
    counts = Counter(pk for rows in claimed for pk in rows)
    assert len(counts) == 600, "every row was claimed"
    assert max(counts.values()) == 1, "no row was claimed twice"
    if connection.features.has_select_for_update_skip_locked:
        # With SKIP LOCKED claimers pass each other; SQLite serialises them instead.
        assert all(rows for rows in claimed), (
            f"every claimer got work: {[len(r) for r in claimed]}")
    assert set(PublishedMessage.objects.values_list("status", "attempts")) == {
        (MessageStatus.PROCESSING, 1)}


@requires_row_locks()
def test_claims_skip_rows_locked_by_another_claimer() -> None:
    """Fails if claiming stops using SKIP LOCKED: the second claimer would wait for the
    first one's lock (and hit the lock timeout) instead of taking other rows."""
    publish_many([ProbeHappened(n=n) for n in range(20)])
    locked = threading.Event()
    release = threading.Event()
    held: list[object] = []

    def holder() -> None:
        try:
            first = list(PublishedMessage.objects.order_by("next_attempt_at")
                         .values_list("pk", flat=True)[:5])
            with transaction.atomic():
                # Lock by key, one row at a time: exactly these five rows on every database
                # (on a tiny table InnoDB may scan a whole index for "pk IN (...)").
                for pk in first:
                    PublishedMessage.objects.select_for_update().get(pk=pk)
                    held.append(pk)
                locked.set()
                release.wait(timeout=30)
        finally:
            connections.close_all()

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert locked.wait(timeout=10)
        with connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                cursor.execute("SET lock_timeout = '3s'")
            else:
                cursor.execute("SET SESSION innodb_lock_wait_timeout = 3")
        started = time.monotonic()
        rows = claim_rows(PublishedMessage, 20, count_attempt=True)
        took = time.monotonic() - started
    finally:
        release.set()
        thread.join()
    assert len(rows) == 15
    assert not {r.pk for r in rows} & set(held)
    assert took < 2, f"the claim waited {took:.1f}s for another claimer's locks"


def test_parallel_workers_deliver_everything_exactly_once() -> None:
    publish_many([ProbeHappened(n=n) for n in range(300)])

    def work(index: int) -> None:
        worker = Worker(keep_leases=False)
        for _ in range(200):
            if not worker.run_once().total:
                return

    errors = run_threads(3, work)
    assert not errors, errors
    assert ReceivedMessage.objects.filter(status=MessageStatus.SUCCEEDED).count() == 600
    per_row = Counter(Delivery.objects.values_list("message_id", "group"))
    assert len(per_row) == 600 and max(per_row.values()) == 1


class _SettingsSeen(OldestFirst):
    """Oldest first, recording PostgreSQL's jit setting as the claim's select sees it."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def select(self, qs, limit, *, skip_locked):  # type: ignore[no-untyped-def]
        with connection.cursor() as cursor:
            cursor.execute("SELECT current_setting('jit')")
            self.seen.append(cursor.fetchone()[0])
        return super().select(qs, limit, skip_locked=skip_locked)


@pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL's JIT compiler")
def test_claims_run_without_postgresql_jit_and_leave_the_session_as_it_was() -> None:
    """A claim's select is estimated at the cost of the whole due index (the LIMIT does not
    lower it), so with a backlog of about 8,000 due rows it passes jit_above_cost and
    PostgreSQL spent 25-30 ms compiling each claim (seen in bench/bridge.py: a third of a
    500-row batch). Claims run with jit off, for their transaction only."""
    publish_many([ProbeHappened(n=i) for i in range(3)])
    strategy = _SettingsSeen()
    with connection.cursor() as cursor:
        cursor.execute("SET jit = on")
    taken = claim(PublishedMessage, "default", 10, "test", strategy, count_attempt=True)
    assert len(taken.rows) == 3
    assert strategy.seen == ["off"]
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('jit')")
        assert cursor.fetchone()[0] == "on"  # SET LOCAL: the caller's session is untouched
