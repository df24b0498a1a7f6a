"""The one rule for "alive": every cluster heartbeats on a period, busy or idle."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db.models.functions import Now
from django.test import override_settings

from integration_events.models import WorkerNode
from integration_events.nodes import alive_nodes, alive_within, any_alive, heartbeat
from tests.conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def test_alive_means_a_heartbeat_within_three_intervals() -> None:
    with override_settings(INTEGRATION_EVENTS={"HEARTBEAT_INTERVAL": 10}):
        assert alive_within() == timedelta(seconds=30)
        assert not any_alive()
        heartbeat("default", name="fresh:1")
        WorkerNode.objects.create(name="old:2", hostname="old", pid=2)
        WorkerNode.objects.filter(name="old:2").update(
            last_seen_at=Now() - timedelta(seconds=31))
        assert [n.name for n in alive_nodes()] == ["fresh:1"]
        assert any_alive()
        WorkerNode.objects.filter(name="fresh:1").update(
            last_seen_at=Now() - timedelta(seconds=29))
        assert any_alive(), "two missed beats are still alive"


def test_heartbeat_counts_what_was_processed() -> None:
    heartbeat("default", processed=3, name="n:1")
    heartbeat("default", processed=4, name="n:1")
    assert WorkerNode.objects.get(name="n:1").processed == 7


@pytest.mark.cluster
def test_an_idle_cluster_keeps_beating_and_a_stopped_one_does_not(cluster) -> None:
    c = cluster(IE_HEARTBEAT_INTERVAL="0.5")
    # This cluster's node (named after its sentinel, a child of the main process), not any
    # other process's row.
    first = wait_for(lambda: WorkerNode.objects.filter(pid__in=c.children()).first(), 60,
                     "a first heartbeat", c.log)
    seen = first.last_seen_at
    # Nothing is published: only the heartbeat thread writes.
    # (A generous bound: a loaded CI machine may starve the beating thread for a while.)
    wait_for(lambda: WorkerNode.objects.get(pk=first.pk).last_seen_at > seen, 30,
             "a later heartbeat from an idle cluster", c.log)
    with override_settings(INTEGRATION_EVENTS={"HEARTBEAT_INTERVAL": 0.5}):
        assert any_alive()
        c.stop()
        stopped_at = WorkerNode.objects.get(pk=first.pk).last_seen_at
        wait_for(lambda: not any_alive(), 30, "the stopped cluster to stop counting as alive")
    assert WorkerNode.objects.get(pk=first.pk).last_seen_at == stopped_at, (
        "nothing beats for a stopped cluster")
