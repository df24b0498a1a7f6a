"""integration_events.health, its command and its JSON view: healthy with a live cluster,
unhealthy with a reason when the heartbeat is old, the lag too high or dead letters too many."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.db.models.functions import Now
from django.test import Client, override_settings

from integration_events import publish
from integration_events.health import check
from integration_events.models import MessageStatus, PublishedMessage, ReceivedMessage, WorkerNode
from integration_events.nodes import heartbeat
from tests.conftest import wait_for
from tests.eventapp.events import ProbeHappened

pytestmark = pytest.mark.django_db


def run(*args: str) -> tuple[int, str, str]:
    from io import StringIO

    out, err = StringIO(), StringIO()
    try:
        call_command("integration_events_health", *args, stdout=out, stderr=err)
        code = 0
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    return code, out.getvalue(), err.getvalue()


def test_healthy_with_a_fresh_heartbeat() -> None:
    heartbeat("default", name="node-1")
    code, out, err = run()
    assert code == 0 and err == ""
    assert out.startswith("ok: 1 node(s) alive, lag 0.0 s, 0 dead letter(s)")


def test_a_backdated_heartbeat_means_no_cluster() -> None:
    heartbeat("default", name="node-1")
    WorkerNode.objects.update(last_seen_at=Now() - timedelta(seconds=91))  # default: 3 x 30 s
    code, out, err = run()
    assert code == 1 and out == ""
    assert err.strip() == ("unhealthy: no cluster is alive on database 'default': no heartbeat "
                           "within 90 s (is manage.py qcluster running?)")
    assert len(err.strip().splitlines()) == 1


def test_lag_over_the_threshold() -> None:
    heartbeat("default", name="node-1")
    publish(ProbeHappened(n=1))
    PublishedMessage.objects.update(next_attempt_at=Now() - timedelta(seconds=400))
    code, _, err = run()
    assert code == 1
    assert err.startswith("unhealthy: lag 400 s exceeds 300 s on database 'default'")
    assert run("--max-lag", "500")[0] == 0


def test_lag_counts_the_inbox_and_ignores_a_paused_group() -> None:
    from integration_events.models import GroupState

    heartbeat("default", name="node-1")
    message = publish(ProbeHappened(n=1))
    ReceivedMessage.objects.create(message=message, group="probe-a", topic=message.topic,
                                   status=MessageStatus.RETRYING)
    PublishedMessage.objects.update(status=MessageStatus.SUCCEEDED)
    ReceivedMessage.objects.update(next_attempt_at=Now() - timedelta(seconds=60))
    assert 59 < check().lag_seconds < 120
    GroupState.objects.create(group="probe-a", paused=True)  # on purpose: not lag
    assert check().lag_seconds == 0


def test_dead_letters_over_the_threshold() -> None:
    heartbeat("default", name="node-1")
    for n in range(3):
        publish(ProbeHappened(n=n))
    PublishedMessage.objects.update(status=MessageStatus.FAILED)
    assert run("--max-dead-letters", "3")[0] == 0
    code, _, err = run("--max-dead-letters", "2")
    assert code == 1
    assert err.startswith("unhealthy: more than 2 dead letters on database 'default'")
    health = check(max_dead_letters=1)
    assert health.dead_letters == 2, "counting stops past the threshold"


def test_every_problem_is_counted_in_the_one_line() -> None:
    publish(ProbeHappened(n=1))
    PublishedMessage.objects.update(next_attempt_at=Now() - timedelta(seconds=400))
    code, _, err = run("--json")
    assert code == 1
    assert err.strip().endswith("(and 1 more)")


def test_json_output() -> None:
    heartbeat("default", name="node-1")
    code, out, _ = run("--json")
    data = json.loads(out)
    assert code == 0 and data["ok"] is True and data["nodes_alive"] == 1
    assert data["databases"] == {"default": {"nodes_alive": 1, "lag_seconds": 0.0,
                                             "dead_letters": 0}}


def test_the_json_view_for_load_balancers() -> None:
    url = "/integration-events/health"
    response = Client().get(url)
    assert response.status_code == 503
    assert response.json()["reason"].startswith("no cluster is alive")
    heartbeat("default", name="node-1")
    response = Client().get(url)
    assert response.status_code == 200 and response.json()["ok"] is True
    assert response["Cache-Control"].startswith("max-age=0")
    publish(ProbeHappened(n=1))
    PublishedMessage.objects.update(next_attempt_at=Now() - timedelta(seconds=100))
    assert Client().get(url, {"max_lag": "60"}).status_code == 503
    assert Client().get(url, {"max_lag": "600"}).status_code == 200
    assert Client().get(url, {"max_lag": "-1"}).status_code == 400
    assert Client().get(url, {"max_dead_letters": "many"}).status_code == 400


@pytest.mark.cluster
@pytest.mark.django_db(transaction=True)
def test_healthy_while_a_real_cluster_runs(cluster) -> None:
    WorkerNode.objects.all().delete()
    assert run()[0] == 1
    c = cluster()
    wait_for(lambda: WorkerNode.objects.exists(), 60, "the cluster's first heartbeat", c.log)
    with override_settings(INTEGRATION_EVENTS={"NUDGE": True}):
        publish(ProbeHappened(n=1))
    wait_for(lambda: ReceivedMessage.objects.filter(status=MessageStatus.SUCCEEDED).count()
             == 2, 60, "the deliveries", c.log)
    code, out, err = run()
    assert code == 0, err
    assert out.startswith("ok: ")
