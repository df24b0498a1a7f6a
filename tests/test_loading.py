"""The claim's compiled lookups (loading.due_rows): the cached SQL serves only querysets
that add nothing of their own, its stand-ins never touch a caller's SQL, and Django's own
checks still hold."""

from __future__ import annotations

import pytest
from django.db import connection, models, transaction
from django.db.transaction import TransactionManagementError

from integration_events import loading, publish_many
from integration_events.models import MessageStatus, ReceivedMessage
from integration_events.worker import Worker
from tests.eventapp.events import ProbeHappened

pytestmark = pytest.mark.django_db

PENDING = MessageStatus.PENDING


@pytest.fixture
def pending_rows() -> int:
    publish_many([ProbeHappened(n=n) for n in range(4)])
    Worker(keep_leases=False).dispatch_batch()
    count = ReceivedMessage.objects.filter(status=PENDING).count()
    assert count >= 4
    return count


def test_a_callers_own_sql_keeps_the_limits_stand_in_number(pending_rows) -> None:
    # The stand-in limit is replaced in the statement compiled with it; a statement that
    # holds the same number of its own is compiled with the real limit and left alone.
    qs = ReceivedMessage.objects.extra(where=[f"{loading._LIMIT_SLOT} > 10"])
    rows = qs.due_rows(PENDING, 3, ("pk",), skip_locked=False)
    assert len(rows) == 3  # "3 > 10" if the number were replaced: no rows


@pytest.mark.parametrize("shape", [
    lambda qs: qs.annotate(one=models.Value(1)),
    lambda qs: qs.extra(select={"one": "1"}),
    lambda qs: qs.distinct(),
    lambda qs: qs.select_related("message"),
    lambda qs: qs.order_by("-pk"),
    lambda qs: qs.reverse(),
    lambda qs: qs.filter(topic="nothing.here"),
], ids=["annotate", "extra-select", "distinct", "select-related", "order-by", "reverse",
     "filter"])
def test_only_plain_querysets_are_compiled_once(pending_rows, shape) -> None:
    loading._COMPILED.clear()
    shaped = shape(ReceivedMessage.objects.all())
    shaped.due_rows(PENDING, 2, ("pk",), skip_locked=False)
    assert loading._COMPILED == {}
    rows = ReceivedMessage.objects.due_rows(PENDING, 2, ("pk",), skip_locked=False)
    assert len(loading._COMPILED) == 1 and len(rows) == 2


def test_an_empty_queryset_finds_nothing(pending_rows) -> None:
    assert ReceivedMessage.objects.none().due_rows(PENDING, 5, ("pk",),
                                                   skip_locked=False) == []


@pytest.mark.skipif(not connection.features.has_select_for_update,
                    reason="no locking reads on this database")
@pytest.mark.django_db(transaction=True)  # autocommit outside the atomic blocks
def test_a_locking_lookup_outside_a_transaction_is_refused_every_time(pending_rows) -> None:
    for _ in range(2):  # compiled the first time, cached the second
        with pytest.raises(TransactionManagementError):
            ReceivedMessage.objects.due_rows(PENDING, 2, ("pk",), skip_locked=True)
        with transaction.atomic():
            assert len(ReceivedMessage.objects.due_rows(PENDING, 2, ("pk",),
                                                        skip_locked=True)) == 2


def test_rows_by_primary_key_take_one_array_parameter_on_postgresql(pending_rows) -> None:
    from django.test.utils import CaptureQueriesContext

    pks = list(ReceivedMessage.objects.order_by("pk").values_list("pk", flat=True))
    chosen = [pks[0], str(pks[-1])]  # a key given as text is prepared like the field's
    with CaptureQueriesContext(connection) as queries:
        found = set(ReceivedMessage.objects.with_pks(chosen).values_list("pk", flat=True))
        changed = ReceivedMessage.objects.with_pks(iter(pks[1:3])).update(attempts=7)
    assert found == {pks[0], pks[-1]} and changed == 2
    assert set(ReceivedMessage.objects.filter(attempts=7).values_list("pk", flat=True)) == \
        set(pks[1:3])
    shape = "= ANY(" if connection.vendor == "postgresql" else " IN ("
    assert all(shape in q["sql"] for q in queries.captured_queries)
    assert list(ReceivedMessage.objects.with_pks([])) == []


def test_the_array_lookup_serves_any_model_and_key_type(pending_rows) -> None:
    # An expression, not a lookup registered on some fields: a model of the engine's with a
    # text primary key takes it as well.
    from django.db.models import F

    from integration_events.loading import AnyOf
    from integration_events.models import GroupState

    for group in ("a", "b", "c"):
        GroupState.objects.create(group=group)
    found = GroupState.objects.filter(AnyOf(F("pk"), ["a", "c", "zz"]))
    assert sorted(found.values_list("group", flat=True)) == ["a", "c"]
    assert not GroupState.objects.filter(AnyOf(F("pk"), [])).exists()
