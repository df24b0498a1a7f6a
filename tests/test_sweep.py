"""The sweep: expiry deletes only rows that are still terminal and expired when deleted."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.db import connection
from django.db.models.functions import Now

from integration_events import publish
from integration_events.models import MessageStatus, ReceivedMessage
from integration_events.operations import reexecute_received
from tests.eventapp.events import ProbeHappened

pytestmark = pytest.mark.django_db


def test_a_row_requeued_between_select_and_delete_survives(worker) -> None:
    publish(ProbeHappened(n=1))
    worker.run_until_idle()
    ReceivedMessage.objects.update(expires_at=Now() - timedelta(seconds=1))
    target = ReceivedMessage.objects.order_by("pk").first()
    requeued = []

    def requeue_after_select(execute, sql, params, many, context):
        result = execute(sql, params, many, context)
        # The SELECT of expired terminal receipts (expires_at compared in its WHERE clause).
        if not requeued and sql.lstrip().upper().startswith("SELECT") \
                and re.search(r"expires_at\W*\s*<", sql) and ReceivedMessage._meta.db_table in sql:
            requeued.append(reexecute_received([target.pk]))  # an operator, at that moment
        return result

    with connection.execute_wrapper(requeue_after_select):
        worker.sweep()
    assert requeued == [1]
    target.refresh_from_db()  # raises DoesNotExist if the sweep deleted it
    assert target.status == MessageStatus.PENDING
