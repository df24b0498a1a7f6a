"""Ordering keys in-process: numbering at publish, the claim rule (the head of each key and
group only), dead letters that block their key, skip / requeue / re-execute, the sweep rule,
and the admin's "blocked by" and blocked-key count. Real qclusters: test_ordering_cluster.py."""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.db.models.functions import Now
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from integration_events import IntegrationEvent, operations, ordering, publish, publish_many
from integration_events.events import event_class_for, forget_event_class
from integration_events.exceptions import IntegrationEventsError
from integration_events.models import (
    MessageStatus,
    OrderingKey,
    PublishedMessage,
    ReceivedMessage,
)
from integration_events.ordering import blocked_keys, blocker
from integration_events.testing import deliver_pending
from tests.admin_helpers import OVERVIEW, RECV_LIST, text_of
from tests.conftest import claim_rows
from tests.eventapp.events import ProbeHappened, Stepped
from tests.eventapp.models import Step

pytest_plugins = ["tests.admin_fixtures"]
pytestmark = pytest.mark.django_db

GROUPS = ("steps-a", "steps-b")


def runs(key: str, group: str) -> list[int]:
    """The steps of ``key`` that ran and committed in ``group``, in commit order."""
    return list(Step.objects.filter(key=key, group=group).order_by("id")
                .values_list("step", flat=True))


def receipt(message: PublishedMessage, group: str) -> ReceivedMessage:
    return ReceivedMessage.objects.get(message=message, group=group)


def run_all() -> None:
    """Deliver until nothing is due, retries included (their backoff is skipped)."""
    deliver_pending(include_delayed=True)


# --- publishing: each key numbered in commit order ---------------------------------------------


def test_each_key_is_numbered_in_publish_order() -> None:
    a1 = publish(Stepped(key="a", step=1))
    b1 = publish(Stepped(key="b", step=1))
    a2 = publish(Stepped(key="a", step=2))
    assert [(m.ordering_key, m.ordering_seq) for m in (a1, b1, a2)] == [
        ("a", 1), ("b", 1), ("a", 2)]
    assert PublishedMessage.objects.get(pk=a2.pk).ordering_seq == 2
    assert dict(OrderingKey.objects.values_list("key", "last_seq")) == {"a": 2, "b": 1}


def test_an_explicit_key_overrides_the_class_field_and_unkeyed_events_take_no_lock(
        django_assert_num_queries) -> None:
    explicit = publish(Stepped(key="a", step=1), ordering_key="order-42")
    assert (explicit.ordering_key, explicit.ordering_seq) == ("order-42", 1)
    keyed = publish(ProbeHappened(n=1), ordering_key="order-42")
    assert keyed.ordering_seq == 2
    with django_assert_num_queries(1):  # the INSERT alone, as before ordering keys
        unkeyed = publish(ProbeHappened(n=2))
    assert (unkeyed.ordering_key, unkeyed.ordering_seq) == ("", None)
    assert set(OrderingKey.objects.values_list("key", flat=True)) == {"order-42"}


def test_publish_many_numbers_each_key_in_list_order() -> None:
    first = publish_many([Stepped(key=k, step=s) for s in range(3) for k in "ab"])
    assert [(m.ordering_key, m.ordering_seq) for m in first] == [
        ("a", 1), ("b", 1), ("a", 2), ("b", 2), ("a", 3), ("b", 3)]
    more = publish_many([ProbeHappened(n=n) for n in range(2)], ordering_key="a")
    assert [m.ordering_seq for m in more] == [4, 5]
    stored = dict(PublishedMessage.objects.filter(ordering_key="a").values_list(
        "pk", "ordering_seq"))
    assert sorted(stored.values()) == [1, 2, 3, 4, 5]
    unkeyed = publish_many([ProbeHappened(n=9)])
    assert unkeyed[0].ordering_seq is None


@pytest.mark.parametrize("key, why", [
    ("", "must not be empty"),
    ("   ", "must not be empty or blank"),
    ("k" * 256, "at most 255 characters"),
    (42, "is a string"),
    ("a\x00b", "NUL"),
])
def test_bad_keys_are_refused_and_nothing_is_stored(key: Any, why: str) -> None:
    with pytest.raises(IntegrationEventsError, match=why):
        publish(ProbeHappened(n=1), ordering_key=key)
    with pytest.raises(IntegrationEventsError, match=why):
        publish_many([ProbeHappened(n=1)], ordering_key=key)
    with pytest.raises(IntegrationEventsError, match=why):
        publish(Stepped(key=key if isinstance(key, str) else "x", step=1),
                ordering_key=key)
    assert not PublishedMessage.objects.exists()
    assert not OrderingKey.objects.exists()


def test_a_key_from_a_field_is_checked_too() -> None:
    with pytest.raises(IntegrationEventsError, match="must not be empty"):
        publish(Stepped(key="", step=1))
    assert not PublishedMessage.objects.exists()


def test_an_event_class_must_name_one_of_its_fields_as_its_key() -> None:
    with pytest.raises(TypeError, match="'nope' is not one of its fields"):
        class Bad(IntegrationEvent, topic="probe.bad-key", ordering_key="nope"):
            n: int
    assert event_class_for("probe.bad-key") is None


def test_a_key_field_holding_none_is_refused_unless_a_key_is_given() -> None:
    class Maybe(IntegrationEvent, topic="probe.maybe-key", ordering_key="ref"):
        ref: uuid.UUID | None = None

    try:
        with pytest.raises(IntegrationEventsError, match=r"Maybe.ref is None"):
            publish(Maybe())
        ref = uuid.uuid4()
        assert publish(Maybe(ref=ref)).ordering_key == str(ref)
        assert publish(Maybe(), ordering_key="given").ordering_key == "given"
    finally:
        forget_event_class(Maybe)


# --- claims: the head of each key and group ------------------------------------------------------


def test_fan_out_copies_the_key_and_number_to_every_receipt(worker) -> None:
    publish(Stepped(key="a", step=1))
    second = publish(Stepped(key="a", step=2))
    worker.dispatch_batch()
    assert set(ReceivedMessage.objects.filter(message=second).values_list(
        "group", "ordering_key", "ordering_seq")) == {(g, "a", 2) for g in GROUPS}


def test_only_the_first_unfinished_row_of_each_key_and_group_is_claimed(worker) -> None:
    publish_many([Stepped(key=k, step=s) for s in range(1, 4) for k in "ab"])
    publish_many([ProbeHappened(n=n) for n in range(2)])
    worker.dispatch_batch()
    claimed = claim_rows(ReceivedMessage, 100, count_attempt=False)
    keyed = sorted((r.ordering_key, r.group, r.ordering_seq) for r in claimed if r.ordering_key)
    assert keyed == [(k, g, 1) for k in "ab" for g in GROUPS]
    assert sum(1 for r in claimed if not r.ordering_key) == 4, "unkeyed rows all claimed"
    # While the heads are held (processing), nothing more of their keys can be claimed.
    assert claim_rows(ReceivedMessage, 100, count_attempt=False) == []
    assert worker.next_due_in() is None, "the waiting rows are not due: no idle spinning"


def test_a_message_not_fanned_out_yet_holds_back_later_ones_of_its_key(worker) -> None:
    early = publish(Stepped(key="a", step=1), delay=3600)
    publish(Stepped(key="a", step=2))
    publish(Stepped(key="b", step=1))
    worker.run_until_idle()
    assert runs("b", "steps-a") == [1]
    assert runs("a", "steps-a") == [], "step 2 waits for step 1 to be fanned out"
    waiting = ReceivedMessage.objects.get(ordering_key="a", group="steps-a")
    assert blocker(waiting) == early
    operations.publish_now([early])
    worker.run_until_idle()
    assert [runs("a", g) for g in GROUPS] == [[1, 2], [1, 2]]


def test_a_failing_head_runs_again_before_the_rest_of_its_key() -> None:
    publish_many([Stepped(key="a", step=1, behaviour="fail:1"), Stepped(key="a", step=2),
                  Stepped(key="b", step=1), Stepped(key="a", step=3)])
    run_all()
    for group in GROUPS:
        assert runs("a", group) == [1, 2, 3]
        assert Step.objects.get(key="a", group=group, step=1).attempt == 2
    assert runs("b", "steps-a") == [1]


# --- dead letters: block their key until an operator acts ----------------------------------------


def dead_head(worker: Any) -> PublishedMessage:
    """Key a: step 1 fails for good, steps 2 and 3 wait; key b and an unkeyed message run."""
    head = publish(Stepped(key="a", step=1, behaviour="permanent"))
    publish_many([Stepped(key="a", step=2), Stepped(key="b", step=1), Stepped(key="a", step=3),
                  Stepped(key="b", step=2)])
    publish(ProbeHappened(n=1))
    run_all()
    return head


def test_a_dead_letter_blocks_only_its_key_in_its_group(worker) -> None:
    head = dead_head(worker)
    for group in GROUPS:
        assert receipt(head, group).status == MessageStatus.FAILED
        assert runs("a", group) == [], "the rest of key a waits"
        assert runs("b", group) == [1, 2], "key b is not held back"
    assert ReceivedMessage.objects.filter(topic=ProbeHappened.topic,
                                          status=MessageStatus.SUCCEEDED).count() == 2
    assert worker.next_due_in() is None, "blocked rows are not due work"
    waiting = ReceivedMessage.objects.get(ordering_key="a", ordering_seq=2, group="steps-a")
    assert blocker(waiting) == receipt(head, "steps-a")
    assert blocked_keys() == (2, False), "key a in each of the two groups"


def test_skip_releases_the_rest_of_the_key_in_order(worker) -> None:
    head = dead_head(worker)
    assert operations.skip_received([receipt(head, "steps-a")]) == 1
    run_all()
    assert runs("a", "steps-a") == [2, 3]
    assert runs("a", "steps-b") == [], "the other group's dead letter still blocks"
    skipped = receipt(head, "steps-a")
    assert skipped.status == MessageStatus.SKIPPED and skipped.expires_at is not None
    assert blocked_keys() == (1, False)


def test_a_requeued_dead_letter_runs_first(worker) -> None:
    head = dead_head(worker)
    # The operator fixes the cause (here: the payload), then re-executes the dead letter.
    PublishedMessage.objects.filter(pk=head.pk).update(
        content=Stepped(key="a", step=1).model_dump_json())
    assert operations.reexecute_received([receipt(head, "steps-b")]) == 1
    run_all()
    assert runs("a", "steps-b") == [1, 2, 3]
    assert runs("a", "steps-a") == []
    # Requeuing the message resets every group's row of it: in steps-a the dead letter, which
    # runs before the rest of its key; in steps-b a replay of a step that already ran, after
    # the steps that followed it (a replay runs again, it does not undo what ran since).
    assert operations.requeue_published([head]) == 1
    run_all()
    assert runs("a", "steps-a") == [1, 2, 3]
    assert runs("a", "steps-b") == [1, 2, 3, 1]
    assert blocked_keys() == (0, False)


def test_an_outbox_dead_letter_blocks_its_key_in_every_group(worker) -> None:
    head = publish(Stepped(key="a", step=1))
    PublishedMessage.objects.filter(pk=head.pk).update(
        status=MessageStatus.FAILED, last_error="could not fan out", finished_at=Now())
    publish(Stepped(key="a", step=2))
    run_all()
    assert [runs("a", g) for g in GROUPS] == [[], []]
    assert blocked_keys() == (1, False)
    assert operations.requeue_published([head]) == 1
    run_all()
    assert [runs("a", g) for g in GROUPS] == [[1, 2], [1, 2]]


def test_skip_published_lets_the_key_go_on_without_it(worker) -> None:
    head = publish(Stepped(key="a", step=1), delay=3600)
    publish(Stepped(key="a", step=2))
    worker.run_until_idle()
    assert runs("a", "steps-a") == []
    assert operations.skip_published([head]) == 1
    worker.run_until_idle()
    assert [runs("a", g) for g in GROUPS] == [[2], [2]]
    assert not ReceivedMessage.objects.filter(message=head).exists()


def test_skip_takes_waiting_and_failed_rows_but_not_running_or_finished_ones(worker) -> None:
    messages = publish_many([Stepped(key=f"k{n}", step=1) for n in range(5)])
    worker.dispatch_batch()
    rows = [receipt(m, "steps-a") for m in messages]
    statuses = [MessageStatus.PENDING, MessageStatus.RETRYING, MessageStatus.FAILED,
                MessageStatus.PROCESSING, MessageStatus.SUCCEEDED]
    for row, status in zip(rows, statuses, strict=True):
        ReceivedMessage.objects.filter(pk=row.pk).update(status=status)
    changed: list[Any] = []
    assert operations.skip_received(rows, on_changed=changed.extend) == 3
    assert sorted(changed) == sorted(r.pk for r in rows[:3])
    after = dict(ReceivedMessage.objects.filter(pk__in=[r.pk for r in rows]).values_list(
        "pk", "status"))
    assert [after[r.pk] for r in rows] == [MessageStatus.SKIPPED] * 3 + statuses[3:]


# --- the sweep: a blocking dead letter does not expire silently ----------------------------------


def test_the_sweep_keeps_expired_dead_letters_that_block_their_key(worker, caplog) -> None:
    head = dead_head(worker)
    lone = publish(Stepped(key="c", step=1, behaviour="permanent"))  # nothing after it
    run_all()
    ReceivedMessage.objects.update(expires_at=Now() - timedelta(seconds=1))
    PublishedMessage.objects.update(expires_at=Now() - timedelta(seconds=1))
    with caplog.at_level(logging.WARNING, logger="integration_events"):
        stats = worker.sweep()
    assert stats.kept_blocking == 2
    assert set(ReceivedMessage.objects.filter(status=MessageStatus.FAILED).values_list(
        "message_id", "group")) == {(head.pk, g) for g in GROUPS}
    assert not ReceivedMessage.objects.filter(message=lone).exists(), "it blocked nothing"
    assert PublishedMessage.objects.filter(pk=head.pk).exists()
    assert "block their ordering key" in caplog.text and str(receipt(head, "steps-a").pk) \
        in caplog.text
    operations.skip_received(ReceivedMessage.objects.filter(message=head))
    assert worker.sweep().kept_blocking == 0


def test_the_sweep_keeps_an_expired_outbox_dead_letter_that_blocks_its_key(worker) -> None:
    head = publish(Stepped(key="a", step=1))
    lone = publish(Stepped(key="z", step=1))
    PublishedMessage.objects.update(status=MessageStatus.FAILED, finished_at=Now(),
                                    expires_at=Now() - timedelta(seconds=1))
    publish(Stepped(key="a", step=2))
    stats = worker.sweep()
    assert stats.kept_blocking == 1 and stats.deleted_published == 1
    assert PublishedMessage.objects.filter(pk=head.pk).exists()
    assert not PublishedMessage.objects.filter(pk=lone.pk).exists()


def keys() -> dict[str, int]:
    return dict(OrderingKey.objects.values_list("key", "last_seq"))


def test_the_sweep_forgets_keys_with_no_message_left_and_numbering_starts_again(worker) -> None:
    publish_many([Stepped(key="a", step=1), Stepped(key="a", step=2), Stepped(key="b", step=1)])
    publish(Stepped(key="c", step=1), delay=3600)  # waiting: its key stays
    worker.run_until_idle()
    assert keys() == {"a": 2, "b": 1, "c": 1}
    ReceivedMessage.objects.filter(ordering_key="a").update(expires_at=Now() - timedelta(seconds=1))
    PublishedMessage.objects.filter(ordering_key="a").update(
        expires_at=Now() - timedelta(seconds=1))
    stats = worker.sweep()
    assert stats.deleted_published == 2 and stats.forgotten_keys == 1
    assert keys() == {"b": 1, "c": 1}, "b still has its (unexpired) rows"
    again = publish(Stepped(key="a", step=3))
    assert again.ordering_seq == 1
    worker.run_until_idle()
    assert [runs("a", g) for g in GROUPS] == [[1, 2, 3], [1, 2, 3]]


def test_a_key_is_kept_while_a_dead_letter_or_any_row_of_it_is_left(worker) -> None:
    publish(Stepped(key="a", step=1, behaviour="permanent"))
    publish(Stepped(key="b", step=1))
    run_all()
    assert worker.sweep().forgotten_keys == 0
    # b's receipts expire; its outbox row does not yet: the key still has a row.
    ReceivedMessage.objects.filter(ordering_key="b").update(
        expires_at=Now() - timedelta(seconds=1))
    stats = worker.sweep()
    assert (stats.deleted_received, stats.forgotten_keys) == (2, 0)
    assert set(keys()) == {"a", "b"}
    PublishedMessage.objects.filter(ordering_key="b").update(
        expires_at=Now() - timedelta(seconds=1))
    assert worker.sweep().forgotten_keys == 1
    assert set(keys()) == {"a"}, "a's dead letters hold it"


def test_a_key_numbered_since_it_was_read_is_not_forgotten(worker) -> None:
    # forget_keys deletes (key, last_seq) pairs read earlier; a publisher that numbered the
    # key in between (and whose rows then went) changed last_seq: the key stays.
    publish(Stepped(key="a", step=1))
    PublishedMessage.objects.all().delete()
    sweeper = worker.sweeper
    assert sweeper.forget_keys([("a", 0)]) == 0
    assert keys() == {"a": 1}
    assert sweeper.forget_keys([("a", 1)]) == 1
    assert keys() == {}


@pytest.mark.django_db(transaction=True)
def test_a_key_numbered_while_the_sweep_deletes_it_is_kept(worker) -> None:
    # Guarantee 5 (per key, commit order) across the sweep: a publisher numbers key a (its
    # row locked, uncommitted) while the sweep's DELETE of (a, 1) runs. The DELETE waits for
    # the lock, then must find last_seq 2 and keep the row; deleting it would number the
    # publisher's next message 1 again, ahead of the one it is committing.
    import threading

    from django.db import connections, transaction

    if not connection.features.has_select_for_update_skip_locked:
        pytest.skip("row locks: PostgreSQL, MariaDB (SQLite has one writer at a time)")
    publish(Stepped(key="a", step=1))
    PublishedMessage.objects.all().delete()
    assert keys() == {"a": 1}
    numbered, go = threading.Event(), threading.Event()
    forgotten: list[int] = []

    def publisher() -> None:
        try:
            with transaction.atomic():
                assert ordering.take_sequence("default", {"a": 1}) == {"a": 2}
                numbered.set()
                go.wait(10)
        finally:
            connections.close_all()

    def sweep() -> None:
        try:
            forgotten.append(worker.sweeper.forget_keys([("a", 1)]))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=publisher), threading.Thread(target=sweep)]
    threads[0].start()
    assert numbered.wait(10)
    threads[1].start()
    threads[1].join(0.5)
    assert threads[1].is_alive(), "the DELETE waits for the publisher's row lock"
    go.set()
    for thread in threads:
        thread.join(10)
    assert forgotten == [0] and keys() == {"a": 2}


def test_the_sweep_pages_through_keys_whose_rows_went_some_other_way(worker, settings) -> None:
    from integration_events import sweep

    settings.INTEGRATION_EVENTS = {**settings.INTEGRATION_EVENTS, "CLEANUP_BATCH_SIZE": 2}
    sweep._key_cursor.clear()
    publish_many([Stepped(key=k, step=1) for k in "abcde"])
    PublishedMessage.objects.filter(ordering_key__in="abd").delete()
    forgotten = [worker.sweep().forgotten_keys for _ in range(4)]
    assert sum(forgotten) == 3 and set(keys()) == {"c", "e"}
    assert forgotten[:3] == [2, 1, 0], "a page of two keys per sweep: (a b) (c d) (e)"


def test_the_keys_of_the_rows_a_sweep_deleted_are_looked_at_beyond_its_page(
        worker, settings) -> None:
    from integration_events import sweep

    settings.INTEGRATION_EVENTS = {**settings.INTEGRATION_EVENTS, "CLEANUP_BATCH_SIZE": 1}
    sweep._key_cursor.clear()
    publish_many([Stepped(key=k, step=1) for k in "abcde"])
    PublishedMessage.objects.filter(ordering_key="e").update(
        status=MessageStatus.SUCCEEDED, expires_at=Now() - timedelta(seconds=1))
    stats = worker.sweep()  # its page is key a alone
    assert (stats.deleted_published, stats.forgotten_keys) == (1, 1)
    assert set(keys()) == set("abcd")


# --- the admin: blocked by, the blocked-key count, the skip action -------------------------------


def test_a_waiting_keyed_row_shows_what_blocks_it(worker, admin_client_: Client) -> None:
    head = dead_head(worker)
    dead = receipt(head, "steps-a")
    waiting = ReceivedMessage.objects.get(ordering_key="a", ordering_seq=2, group="steps-a")
    dead_url = reverse("admin:integration_events_receivedmessage_change", args=[dead.pk])
    listing = admin_client_.get(reverse(RECV_LIST) + "?group=steps-a&ordering_key=a")
    body = listing.content.decode()
    assert listing.status_code == 200 and "blocked by" in body and dead_url in body
    detail = admin_client_.get(reverse("admin:integration_events_receivedmessage_change",
                                       args=[waiting.pk]))
    assert dead_url in detail.content.decode()
    assert "its turn" not in text_of(detail)
    head_page = text_of(admin_client_.get(dead_url))
    assert "ordering key" in head_page.lower()
    blocking = text_of(admin_client_.get(reverse(RECV_LIST) + "?blocking=yes"))
    assert f"{head.pk}" in blocking or str(dead.pk) in blocking


def test_blockers_of_a_page_are_what_blocker_says_row_by_row(worker) -> None:
    dead_head(worker)  # key a: a dead head with steps waiting; key b ran
    early = publish(Stepped(key="c", step=1), delay=3600)  # not fanned out: holds c back
    publish_many([Stepped(key="c", step=2), Stepped(key="d", step=1), Stepped(key="d", step=2)])
    worker.dispatch_batch()
    rows = list(ReceivedMessage.objects.exclude(ordering_key=""))
    expected = {r.pk: ordering.blocker(r) for r in rows if ordering.blocker(r) is not None}
    found = ordering.blockers(rows)
    assert found == expected
    assert {type(b).__name__ for b in found.values()} == {"ReceivedMessage", "PublishedMessage"}
    assert early.pk in {b.pk for b in found.values()}


def test_the_received_list_looks_blockers_up_per_page_not_per_row(
        worker, admin_client_: Client) -> None:
    def queries_for_list() -> int:
        with CaptureQueriesContext(connection) as queries:
            response = admin_client_.get(reverse(RECV_LIST) + "?group=steps-a")
        assert response.status_code == 200 and "blocked by" in response.content.decode()
        return len(queries)

    publish_many([Stepped(key=f"k{n}", step=s) for n in range(2) for s in (1, 2)])
    worker.dispatch_batch()
    few = queries_for_list()
    publish_many([Stepped(key=f"k{n}", step=s) for n in range(2, 12) for s in (1, 2)])
    worker.dispatch_batch()
    assert queries_for_list() == few, "12 waiting keyed rows cost what 2 did"


def test_the_overview_counts_the_blocked_keys(worker, admin_client_: Client) -> None:
    dead_head(worker)
    page = admin_client_.get(reverse(OVERVIEW)).content.decode()
    assert 'id="ie-blocked-keys"' in page
    card = page.split('id="ie-blocked-keys"', 1)[1][:200]
    assert "?blocking=yes\">2</a>" in card
    live = admin_client_.get(reverse("admin:integration_events_live")).json()
    assert live["blocked_keys"] == "2"


def test_the_skip_action_skips_and_writes_history(worker, operator: Client) -> None:
    from django.contrib.admin.models import LogEntry

    head = dead_head(worker)
    dead = receipt(head, "steps-a")
    response = operator.post(reverse(RECV_LIST), {
        "action": "skip", "_selected_action": [str(dead.pk)]}, follow=True)
    assert "1 message(s) skipped" in text_of(response)
    dead.refresh_from_db()
    assert dead.status == MessageStatus.SKIPPED
    assert LogEntry.objects.filter(object_id=str(dead.pk),
                                   change_message="Skipped (was failed)").exists()
    run_all()
    assert runs("a", "steps-a") == [2, 3]


def test_a_pass_over_keyed_rows_costs_the_queries_of_unkeyed_ones(
        django_assert_num_queries) -> None:
    """The keyed conditions ride in the claim's SELECT: passes over 50 keys' heads cost what
    passes over unkeyed rows cost (tests/test_query_counts.py pins those)."""
    from django.test import override_settings

    from integration_events.worker import Worker
    from tests.test_query_counts import STEADY, dispatch_100, execute_100

    with override_settings(INTEGRATION_EVENTS=STEADY):
        publish_many([Stepped(key=f"k{n}", step=1) for n in range(50)])
        worker = Worker(keep_leases=False)
        with django_assert_num_queries(dispatch_100()):
            assert worker.dispatch_batch().dispatched == 50
        with django_assert_num_queries(execute_100()):
            assert worker.execute_batch().succeeded == 100


def test_a_backlog_claim_takes_only_the_head_of_each_key_from_groups_it_looks_up(worker) -> None:
    # FairShare with a backlog: the oldest rows (unkeyed probes) fill its window, so the
    # keyed groups are looked up one by one on their own index range; that lookup must keep
    # to the key's order too, or steps 2 and 3 run beside (or before) step 1.
    from integration_events.claims import claim
    from integration_events.flow import FairShare
    from integration_events.worker import default_claimer

    publish_many([ProbeHappened(n=n) for n in range(10)])
    publish_many([Stepped(key="a", step=s) for s in (1, 2, 3)])
    worker.dispatch_batch()
    strategy = FairShare()
    # The probes' groups are slow (a row each per pass), so the keyed groups' rows fit.
    unkeyed = ReceivedMessage.objects.filter(ordering_key="").values_list("group", flat=True)
    strategy.cost = dict.fromkeys(unkeyed, 10.0)
    taken = claim(ReceivedMessage, "default", 5, default_claimer(), strategy,
                  count_attempt=False).rows
    keyed = sorted((r.group, r.ordering_seq) for r in taken if r.ordering_key)
    assert keyed == [(g, 1) for g in GROUPS]
