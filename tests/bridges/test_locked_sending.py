"""The locked claim of a bridge's rows (integration_events.claims): on a database with
SKIP LOCKED the rows of bridge:<name> stay locked in the claim's transaction while their
batch is published and confirmed, and each row is written once, with its outcome and its
attempt. A connection lost before the commit rolls everything back, so the rows are sent
again (at least once); refused messages still spend an attempt; SQLite keeps the leased
claim. A real RabbitMQ, a real database, and a plain-pika peer."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import pytest
from django.conf import settings
from django.db import DatabaseError, connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from integration_events import publish_many
from integration_events.instrumentation import Instrumentation
from integration_events.journal import ClaimJournal
from integration_events.models import MessageBase, MessageStatus, ReceivedMessage
from integration_events.outcomes import Outcome
from integration_events.worker import Worker
from tests.eventapp.events import LonelyHappened

from .conftest import drain

pytestmark = pytest.mark.django_db
LOCKS = connection.features.has_select_for_update_skip_locked
needs_locks = pytest.mark.skipif(not LOCKS, reason="the database has no SKIP LOCKED")
# A topic no local group subscribes to: the bridge's rows are the only ones; sent under lock.
ALONE: dict[str, Any] = {"SEND": [LonelyHappened.topic], "bind": ("#",)}
INBOX_UPDATE = re.compile(r'^UPDATE "?`?integration_events_receivedmessage', re.IGNORECASE)


def inbox_updates(queries: CaptureQueriesContext) -> list[str]:
    return [q["sql"] for q in queries.captured_queries if INBOX_UPDATE.match(q["sql"])]


def savepoints(queries: CaptureQueriesContext) -> list[str]:
    return [re.sub(r' "?`?\w+"?`?$', "", q["sql"]) for q in queries.captured_queries
            if "SAVEPOINT" in q["sql"].upper()]


def rows(group: str) -> list[ReceivedMessage]:
    return list(ReceivedMessage.objects.filter(group=group).order_by("pk"))


def test_a_bridges_rows_are_written_once_where_rows_can_be_locked(
        bridged: Callable[..., Any], peer: Any) -> None:
    out = bridged(**ALONE)
    publish_many([LonelyHappened(n=n) for n in range(30)])
    worker = Worker(keep_leases=False)
    while worker.dispatch_batch().total:
        pass
    assert worker.executor.locked_groups() == ({out.group} if LOCKS else set())
    with CaptureQueriesContext(connection) as queries:
        stats = worker.execute_batch()
    assert stats.succeeded == 30
    updates = inbox_updates(queries)
    if LOCKS:
        # One UPDATE to succeeded (the attempt counted in it); no lease, no PROCESSING. It
        # runs while the broker confirms, under a savepoint that is kept.
        assert len(updates) == 1, updates
        assert not any("lease_token\" = '" in u or "PROCESSING" in u.upper() for u in updates)
        # (The claim's own atomic block is a savepoint too, inside the test's transaction.)
        assert savepoints(queries) == ["SAVEPOINT", "SAVEPOINT", "RELEASE SAVEPOINT",
                                       "RELEASE SAVEPOINT"]
    else:
        assert len(updates) == 2, "SQLite: the claim's lease, then the completion"
    assert {(r.status, r.attempts, r.lease_token) for r in rows(out.group)} == {
        (MessageStatus.SUCCEEDED, 1, None)}
    assert len(drain(peer, out.queue, expect=30)) == 30


def test_without_locked_claims_a_bridges_rows_are_leased(
        bridged: Callable[..., Any], peer: Any) -> None:
    """The default: the claim leases the rows and counts their attempt in a committed write
    before anything is sent, so a worker killed mid-batch has spent it (guarantee 3)."""
    out = bridged(**{**ALONE, "LOCKED_CLAIMS": False})
    publish_many([LonelyHappened(n=n) for n in range(10)])
    worker = Worker(keep_leases=False)
    while worker.dispatch_batch().total:
        pass
    assert worker.executor.locked_groups() == set()
    with CaptureQueriesContext(connection) as queries:
        assert worker.execute_batch().succeeded == 10
    claim_update, completion = inbox_updates(queries)
    assert "PROCESSING" in claim_update.upper() and "attempts" in claim_update
    assert {(r.status, r.attempts) for r in rows(out.group)} == {(MessageStatus.SUCCEEDED, 1)}
    assert len(drain(peer, out.queue, expect=10)) == 10


@needs_locks
def test_refused_and_confirmed_rows_of_one_locked_batch_each_get_their_attempt(
        bridged: Callable[..., Any], peer: Any, unique: Callable[[str], str]) -> None:
    out = bridged(bind=(), SEND=ALONE["SEND"], LOCKED_CLAIMS=True)
    full = unique("full")  # takes 3, the broker nacks the rest
    peer.queue_declare(full, arguments={"x-max-length": 3, "x-overflow": "reject-publish"})
    peer.queue_bind(full, out.exchange, "#")
    publish_many([LonelyHappened(n=n) for n in range(5)])
    worker = Worker(keep_leases=False)
    while worker.dispatch_batch().total:
        pass
    with CaptureQueriesContext(connection) as queries:
        worker.execute_batch()
    # All rows written succeeded while the broker confirms; as it refused two, that is rolled
    # back: then one UPDATE for the confirmed rows, one per refused row (its own reason).
    assert savepoints(queries) == ["SAVEPOINT", "SAVEPOINT", "ROLLBACK TO SAVEPOINT",
                                   "RELEASE SAVEPOINT"]
    assert len(inbox_updates(queries)) == 1 + 1 + 2
    assert sorted((r.status, r.attempts, r.error_type) for r in rows(out.group)) == sorted(
        [(MessageStatus.SUCCEEDED, 1, "")] * 3 + [(MessageStatus.RETRYING, 1, "SendFailed")] * 2)


class CutTheConnection(Instrumentation):
    """After the locked batch's rows are marked succeeded and before the commit, the worker's
    database session ends (killed by the server), as when the worker dies there."""

    armed: ClassVar[bool] = False

    def outcome(self, row: MessageBase, outcome: Outcome, error: BaseException | None) -> None:
        if CutTheConnection.armed and outcome is Outcome.SUCCEEDED:
            CutTheConnection.armed = False
            kill = ("SELECT pg_terminate_backend(pg_backend_pid())"
                    if connection.vendor == "postgresql" else "KILL CONNECTION_ID()")
            with connection.cursor() as cursor:
                cursor.execute(kill)


class HangBeforeCommit(Instrumentation):
    """The worker hangs (longer than LEASE_SECONDS) before the locked batch commits."""

    armed: ClassVar[float] = 0.0

    def outcome(self, row: MessageBase, outcome: Outcome, error: BaseException | None) -> None:
        if HangBeforeCommit.armed and outcome is Outcome.SUCCEEDED:
            seconds, HangBeforeCommit.armed = HangBeforeCommit.armed, 0.0
            time.sleep(seconds)


@pytest.fixture
def instrumented() -> Iterator[Callable[[type[Instrumentation]], None]]:
    stack: list[Any] = []

    def use(kind: type[Instrumentation], **keys: Any) -> None:
        path = f"{__name__}.{kind.__name__}"
        ctx = override_settings(INTEGRATION_EVENTS={
            **settings.INTEGRATION_EVENTS, "INSTRUMENTATION": [path], **keys})
        ctx.enable()
        stack.append(ctx)

    yield use
    for ctx in reversed(stack):
        ctx.disable()
    CutTheConnection.armed, HangBeforeCommit.armed = False, 0.0


def reconnect() -> None:
    connection.close()  # the killed session: Django opens a new one on the next query


@needs_locks
@pytest.mark.django_db(transaction=True)
def test_a_worker_that_dies_before_the_commit_leaves_the_rows_to_be_sent_again(
        bridged: Callable[..., Any], peer: Any,
        instrumented: Callable[..., None]) -> None:
    out = bridged(**ALONE)
    messages = kill_a_locked_batch(out, 20, instrumented)
    # Published and confirmed, but nothing of it committed: due again, no attempt spent.
    first = drain(peer, out.queue, expect=20)
    assert {(r.status, r.attempts) for r in rows(out.group)} == {(MessageStatus.PENDING, 0)}
    Worker(keep_leases=False).run_until_idle()
    again = drain(peer, out.queue, expect=20)
    ids = sorted(str(m.pk) for m in messages)
    assert sorted(p.headers["cap-msg-id"] for _, p, _ in first) == ids
    assert sorted(p.headers["cap-msg-id"] for _, p, _ in again) == ids, "sent again, same ids"
    assert {(r.status, r.attempts) for r in rows(out.group)} == {(MessageStatus.SUCCEEDED, 1)}
    # The dead claim's journal row is still there; its rows are done, so the sweep drops it
    # without counting anything.
    assert ClaimJournal.objects.count() == 1
    assert Worker(keep_leases=False).sweep().released == 0
    assert not ClaimJournal.objects.exists()
    assert {(r.status, r.attempts) for r in rows(out.group)} == {(MessageStatus.SUCCEEDED, 1)}


def kill_a_locked_batch(out: Any, count: int, instrumented: Callable[..., None],
                        **keys: Any) -> list[Any]:
    """Publish ``count`` events and run their locked batch until the worker's session is
    killed before the commit; returns the published messages."""
    messages = publish_many([LonelyHappened(n=n) for n in range(count)])
    instrumented(CutTheConnection, **keys)
    worker = Worker(keep_leases=False)
    while worker.dispatch_batch().total:
        pass
    CutTheConnection.armed = True
    with pytest.raises(DatabaseError):
        worker.execute_batch()
    reconnect()
    return messages


@needs_locks
@pytest.mark.django_db(transaction=True)
def test_the_sweep_counts_the_attempt_a_dead_locked_claim_spent(
        bridged: Callable[..., Any], peer: Any, instrumented: Callable[..., None]) -> None:
    """Guarantee 3 with locked claims: the claim journal row, committed on its own connection
    before the batch, outlives the rolled-back claim; the sweep counts the attempt, marks
    the rows LeaseExpired (each then claimed alone) and deletes the journal row."""
    out = bridged(**ALONE)
    kill_a_locked_batch(out, 4, instrumented)
    drain(peer, out.queue, expect=4)
    (entry,) = ClaimJournal.objects.all()
    assert sorted(entry.rows) == sorted(r.pk for r in rows(out.group))
    assert entry.claimed_by == Worker(keep_leases=False).name
    stats = Worker(keep_leases=False).sweep()
    assert (stats.released, stats.dead) == (4, 0)
    assert not ClaimJournal.objects.exists()
    assert {(r.status, r.attempts, r.error_type) for r in rows(out.group)} == {
        (MessageStatus.RETRYING, 1, "LeaseExpired")}
    assert "died before it committed" in rows(out.group)[0].last_error
    ReceivedMessage.objects.update(next_attempt_at=timezone.now())
    worker = Worker(keep_leases=False)
    assert [worker.execute_batch().succeeded for _ in range(5)] == [1, 1, 1, 1, 0], \
        "claimed alone"
    assert {(r.status, r.attempts) for r in rows(out.group)} == {(MessageStatus.SUCCEEDED, 2)}


@needs_locks
@pytest.mark.django_db(transaction=True)
def test_a_message_that_kills_its_worker_every_time_ends_dead_lettered(
        bridged: Callable[..., Any], peer: Any, instrumented: Callable[..., None]) -> None:
    """Bridge rows fail by age (FAIL_AFTER): past it, the dead claim's attempt is the last."""
    out = bridged(**{**ALONE, "FAIL_AFTER": 0.001})
    kill_a_locked_batch(out, 2, instrumented)
    stats = Worker(keep_leases=False).sweep()
    assert (stats.released, stats.dead) == (0, 2)
    assert {(r.status, r.attempts, r.error_type) for r in rows(out.group)} == {
        (MessageStatus.FAILED, 1, "LeaseExpired")}


class SweepDuringTheBatch(Instrumentation):
    """While the locked batch runs (its rows marked succeeded, not committed), another
    thread's sweep looks at the journal."""

    seen: ClassVar[list[Any]] = []

    def outcome(self, row: MessageBase, outcome: Outcome, error: BaseException | None) -> None:
        if outcome is not Outcome.SUCCEEDED or SweepDuringTheBatch.seen:
            return
        result: list[Any] = []

        def sweep() -> None:
            try:
                stats = Worker(keep_leases=False).sweep()
                result.append((stats.released, stats.dead,
                               list(ClaimJournal.objects.values_list("rows", flat=True))))
            finally:
                connection.close()

        thread = threading.Thread(target=sweep)
        thread.start()
        thread.join(30)
        SweepDuringTheBatch.seen.extend(result or ["the sweep did not finish"])


@needs_locks
@pytest.mark.django_db(transaction=True)
def test_a_sweep_leaves_the_journal_row_of_a_claim_that_still_runs(
        bridged: Callable[..., Any], peer: Any, instrumented: Callable[..., None]) -> None:
    out = bridged(**ALONE)
    publish_many([LonelyHappened(n=n) for n in range(3)])
    SweepDuringTheBatch.seen = []
    instrumented(SweepDuringTheBatch)
    worker = Worker(keep_leases=False)
    while worker.dispatch_batch().total:
        pass
    assert worker.execute_batch().succeeded == 3
    (released, dead, journal_rows), = SweepDuringTheBatch.seen
    assert (released, dead) == (0, 0), "the claim's rows are locked: not a dead claim"
    assert [sorted(r) for r in journal_rows] == [sorted(r.pk for r in rows(out.group))]
    assert not ClaimJournal.objects.exists(), "deleted by the claim's commit"
    assert {(r.status, r.attempts) for r in rows(out.group)} == {(MessageStatus.SUCCEEDED, 1)}
    drain(peer, out.queue, expect=3)


@pytest.mark.skipif(connection.vendor not in ("postgresql", "mysql"),
                    reason="PostgreSQL's and MariaDB's idle timeouts")
@pytest.mark.django_db(transaction=True)
def test_a_worker_hung_in_its_locked_claim_loses_it_after_lease_seconds(
        bridged: Callable[..., Any], peer: Any,
        instrumented: Callable[..., None]) -> None:
    if connection.vendor == "mysql" and not connection.mysql_is_mariadb:
        pytest.skip("MySQL has no idle_transaction_timeout")
    out = bridged(**ALONE)
    publish_many([LonelyHappened(n=n) for n in range(5)])
    instrumented(HangBeforeCommit, LEASE_SECONDS=1)
    worker = Worker(keep_leases=False)
    while worker.dispatch_batch().total:
        pass
    HangBeforeCommit.armed = 2.5
    with pytest.raises(DatabaseError):
        worker.execute_batch()  # the server ended the session after 1 s idle in it
    reconnect()
    assert {(r.status, r.attempts) for r in rows(out.group)} == {(MessageStatus.PENDING, 0)}
    drain(peer, out.queue, expect=5)
    Worker(keep_leases=False).run_until_idle()
    assert {(r.status, r.attempts) for r in rows(out.group)} == {(MessageStatus.SUCCEEDED, 1)}
    if connection.vendor == "mysql":  # the session's timeout was set back after the claim
        with connection.cursor() as cursor:
            cursor.execute("SELECT @@session.idle_transaction_timeout")
            assert cursor.fetchone() == (0,)


def test_a_stop_during_the_batch_records_it_and_stops_after_the_commit(
        bridged: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from integration_events.bridging import resolver

    out = bridged(**ALONE)
    publish_many([LonelyHappened(n=n) for n in range(3)])
    worker = Worker(keep_leases=False)
    while worker.dispatch_batch().total:
        pass
    sender = resolver.bridges()["out"].sender

    def interrupted(config: Any) -> Any:
        raise KeyboardInterrupt  # e.g. django-q2's task timeout while publishing

    monkeypatch.setattr(sender, "publisher", interrupted)
    with pytest.raises(KeyboardInterrupt):
        worker.execute_batch()
    assert {(r.status, r.attempts, r.error_type) for r in rows(out.group)} == {
        (MessageStatus.RETRYING, 1, "KeyboardInterrupt")}


@pytest.mark.skipif(connection.vendor != "postgresql",
                    reason="PostgreSQL's REPEATABLE READ snapshot; MariaDB's deletes see it")
@pytest.mark.django_db(transaction=True)
def test_a_claim_that_cannot_see_its_journal_row_stops_before_sending(
        bridged: Callable[..., Any], peer: Any) -> None:
    """Under snapshot isolation the claim's transaction cannot see (nor delete) the journal
    row committed beside it: the claim stops with the fix named, before anything is sent,
    and leaves neither the journal row nor a spent attempt."""
    from django.core.exceptions import ImproperlyConfigured

    out = bridged(**ALONE)
    publish_many([LonelyHappened(n=n) for n in range(3)])
    worker = Worker(keep_leases=False)
    while worker.dispatch_batch().total:
        pass
    with connection.cursor() as cursor:
        cursor.execute("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL "
                       "REPEATABLE READ")
    try:
        with pytest.raises(ImproperlyConfigured, match="READ COMMITTED"):
            worker.execute_batch()
    finally:
        connection.close()
    assert not ClaimJournal.objects.exists()
    assert {(r.status, r.attempts) for r in rows(out.group)} == {(MessageStatus.PENDING, 0)}
    assert drain(peer, out.queue, expect=0, timeout=1.0) == []


@needs_locks
@pytest.mark.django_db(transaction=True)
def test_deliver_pending_closes_the_journal_connection(bridged: Callable[..., Any],
                                                        peer: Any) -> None:
    """Outside a transaction the locked claim opens the journal's connection; the testing
    helper closes it (else a test database cannot be dropped at the end of a suite)."""
    from integration_events import journal
    from integration_events.testing import deliver_pending

    out = bridged(**ALONE)
    publish_many([LonelyHappened(n=n) for n in range(2)])
    opened: list[Any] = []
    real = journal._connection

    def spy(using: str) -> Any:
        opened.append(real(using))
        return opened[-1]

    journal._connection = spy  # type: ignore[assignment]
    try:
        assert deliver_pending().total >= 2
    finally:
        journal._connection = real  # type: ignore[assignment]
    assert opened, "the locked claim used the journal connection"
    assert all(c.connection is None for c in opened), "closed"
    assert not getattr(journal._local, "connections", {})
    drain(peer, out.queue, expect=2)
