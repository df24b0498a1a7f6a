"""The admin dashboard: pages, permissions, actions, escaping, and big-table habits."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.contrib import admin
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from integration_events import publish
from integration_events.admin import STATUS_COLOURS, EstimatedCountPaginator, status_badge
from integration_events.models import (
    MessageStatus,
    PublishedMessage,
    ReceivedMessage,
    WorkerNode,
    uuid7,
)
from integration_events.registry import subscriber, unregister
from integration_events.testing import deliver_pending
from tests.eventapp.events import ProbeHappened

pytestmark = pytest.mark.django_db

XSS = '<script>alert("x")</script><b onmouseover="evil()">'
XSS_ESCAPED = "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;"

OVERVIEW = "admin:integration_events_overview"
LIVE = "admin:integration_events_live"
SUBSCRIBERS = "admin:integration_events_subscribers"
NODES = "admin:integration_events_nodes"
PUB_LIST = "admin:integration_events_publishedmessage_changelist"
RECV_LIST = "admin:integration_events_receivedmessage_changelist"
DASHBOARD_PAGES = (OVERVIEW, LIVE, SUBSCRIBERS, NODES, PUB_LIST, RECV_LIST)


@pytest.fixture(autouse=True)
def _fresh_cache() -> None:
    # The overview caches the counts of hours that are over (dashboard.series).
    from django.core.cache import cache

    cache.clear()


def make_user(name: str, *, staff: bool = True, perms: tuple[str, ...] = ()) -> Client:
    user = User.objects.create_user(name, password="pw", is_staff=staff)
    for codename in perms:
        user.user_permissions.add(Permission.objects.get(
            content_type__app_label="integration_events", codename=codename))
    client = Client()
    client.force_login(user)
    return client


VIEW = ("view_publishedmessage", "view_receivedmessage", "view_workernode")
CHANGE = ("change_publishedmessage", "change_receivedmessage")
DELETE = ("delete_publishedmessage", "delete_receivedmessage")


@pytest.fixture
def admin_client_() -> Client:
    User.objects.create_superuser("root", "root@example.com", "pw")
    client = Client()
    client.login(username="root", password="pw")
    return client


@pytest.fixture
def viewer() -> Client:
    return make_user("viewer", perms=VIEW)


@pytest.fixture
def operator() -> Client:
    return make_user("operator", perms=VIEW + CHANGE)


def failed_message(behaviour: str = "fail", n: int = 1, text: str = "") -> PublishedMessage:
    """A message whose group probe-a handler fails every attempt (until it is told not to)."""
    message = publish(ProbeHappened(n=n, behaviour=behaviour, only_group="probe-a", text=text))
    deliver_pending(include_delayed=True)
    return message


def text_of(response: Any) -> str:
    return response.content.decode()


# --- badges and read-only -----------------------------------------------------------------------


def test_every_status_has_a_badge_colour() -> None:
    assert set(STATUS_COLOURS) == {s.value for s in MessageStatus}
    for status in MessageStatus:
        assert f"ie-{status.value}" in status_badge(status.value)
        assert str(status.label) in status_badge(status.value)


def test_messages_cannot_be_added_or_edited(admin_client_: Client) -> None:
    message = publish(ProbeHappened(n=1))
    add = admin_client_.get(reverse("admin:integration_events_publishedmessage_add"))
    assert add.status_code == 403
    url = reverse("admin:integration_events_publishedmessage_change", args=[message.pk])
    page = admin_client_.get(url)
    assert page.status_code == 200
    assert 'name="_save"' not in text_of(page)
    posted = admin_client_.post(url, {"topic": "hacked", "status": "succeeded"})
    assert posted.status_code == 403
    message.refresh_from_db()
    assert message.topic == ProbeHappened.topic
    assert message.status == MessageStatus.PENDING


# --- overview and live endpoint -----------------------------------------------------------------


def test_overview_shows_counts_lag_rates_and_charts(admin_client_: Client) -> None:
    for n in range(3):
        publish(ProbeHappened(n=n))
    deliver_pending()
    failed_message(n=9)
    publish(ProbeHappened(n=10))  # pending, due now: the lag
    PublishedMessage.objects.filter(status=MessageStatus.PENDING).update(
        next_attempt_at=timezone.now() - timedelta(minutes=5))
    response = admin_client_.get(reverse(OVERVIEW))
    assert response.status_code == 200
    body = text_of(response)
    live = response.context["live"]
    assert live["published"]["succeeded"] == 4
    assert live["published"]["pending"] == 1
    assert live["received"]["probe-a"]["failed"] == 1
    assert live["received"]["probe-a"]["succeeded"] == 3
    assert live["received"]["probe-b"]["succeeded"] == 4
    assert live["lag"]["published"] >= 299
    assert "5 min" in response.context["lag_published"]
    assert live["per_second"]["published"] > 0
    assert sum(live["rates"]["delivered"]) > 0
    assert body.count("<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"ie-chart\"") == 2
    assert "ie-series-published" in body and "ie-series-failed" in body
    assert response.context["history"]["totals"]["published"] == 5
    assert response.context["history"]["totals"]["failed"] == 1
    assert "integration_events/admin/overview.js" in body
    assert "http://" not in body.replace('xmlns="http://www.w3.org/2000/svg"', "").replace(
        "http://testserver", "")


def test_live_endpoint_returns_json_rates_and_counts(admin_client_: Client) -> None:
    publish(ProbeHappened(n=1))
    deliver_pending()
    response = admin_client_.get(reverse(LIVE))
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    data = json.loads(response.content)
    assert data["published"]["succeeded"] == 1
    assert data["received"]["probe-a"]["succeeded"] == 1
    assert len(data["rates"]["published"]) == 30
    assert sum(data["rates"]["published"]) == pytest.approx(0.1)
    assert data["chart"].startswith("<svg")
    assert "no-cache" in response["Cache-Control"] or "max-age=0" in response["Cache-Control"]


def test_rates_fall_in_the_right_buckets_and_history_hours() -> None:
    from integration_events import dashboard

    now = timezone.now()
    old = publish(ProbeHappened(n=1))
    PublishedMessage.objects.filter(pk=old.pk).update(created_at=now - timedelta(hours=3))
    publish(ProbeHappened(n=2))
    history = dashboard.history(now)
    assert sum(r["published"] for r in history["rows"]) == 2
    assert history["rows"][-1]["published"] == 1
    assert history["rows"][-4]["published"] == 1
    live = dashboard.live_rates(now + timedelta(seconds=1))
    assert sum(live["rates"]["published"]) == pytest.approx(1 / dashboard.RATE_BUCKET_SECONDS)
    # Hours that are over come from the cache; the current hour is always counted afresh.
    PublishedMessage.objects.all().delete()
    again = dashboard.history(now)
    assert again["rows"][-4]["published"] == 1
    assert again["rows"][-1]["published"] == 0


# --- permissions --------------------------------------------------------------------------------


@pytest.mark.parametrize("page", DASHBOARD_PAGES)
def test_anonymous_gets_nothing(page: str) -> None:
    publish(ProbeHappened(n=1, text="secret-payload"))
    response = Client().get(reverse(page))
    assert response.status_code == 302
    assert "/login/" in response["Location"]
    assert b"secret-payload" not in response.content


@pytest.mark.parametrize("page", DASHBOARD_PAGES)
def test_non_staff_gets_nothing_even_with_permissions(page: str) -> None:
    client = make_user("outsider", staff=False, perms=VIEW + CHANGE + DELETE)
    response = client.get(reverse(page))
    assert response.status_code == 302
    assert "/login/" in response["Location"]


@pytest.mark.parametrize("page", DASHBOARD_PAGES)
def test_staff_without_view_permission_is_refused(page: str) -> None:
    client = make_user("bystander")
    response = client.get(reverse(page))
    assert response.status_code == 403


def test_view_only_staff_sees_everything(viewer: Client) -> None:
    message = failed_message()
    receipt = ReceivedMessage.objects.get(message=message, group="probe-a")
    for page in (OVERVIEW, LIVE, SUBSCRIBERS, NODES, PUB_LIST, RECV_LIST):
        assert viewer.get(reverse(page)).status_code == 200, page
    for url in (
        reverse("admin:integration_events_publishedmessage_change", args=[message.pk]),
        reverse("admin:integration_events_receivedmessage_change", args=[receipt.pk]),
    ):
        assert viewer.get(url).status_code == 200


def test_view_only_staff_can_act_on_nothing(viewer: Client) -> None:
    message = failed_message()
    receipt = ReceivedMessage.objects.get(message=message, group="probe-a")
    listing = viewer.get(reverse(PUB_LIST))
    assert 'name="action"' not in text_of(listing)
    for url, action, pk in (
        (reverse(PUB_LIST), "requeue", message.pk),
        (reverse(PUB_LIST), "publish_now", message.pk),
        (reverse(PUB_LIST), "delete_selected", message.pk),
        (reverse(RECV_LIST), "reexecute", receipt.pk),
        (reverse(RECV_LIST), "delete_selected", receipt.pk),
    ):
        viewer.post(url, {"action": action, "_selected_action": [str(pk)], "post": "yes"})
    receipt.refresh_from_db()
    assert receipt.status == MessageStatus.FAILED
    assert receipt.attempts == 3
    assert PublishedMessage.objects.filter(pk=message.pk).exists()
    delete = reverse("admin:integration_events_publishedmessage_delete", args=[message.pk])
    assert viewer.post(delete, {"post": "yes"}).status_code == 403
    assert PublishedMessage.objects.filter(pk=message.pk).exists()


def test_change_permission_offers_actions_but_not_delete(operator: Client) -> None:
    body = text_of(operator.get(reverse(PUB_LIST)))
    assert 'value="requeue"' in body
    assert 'value="publish_now"' in body
    assert 'value="delete_selected"' not in body
    body = text_of(operator.get(reverse(RECV_LIST)))
    assert 'value="reexecute"' in body
    assert 'value="delete_selected"' not in body


def test_delete_permission_deletes() -> None:
    client = make_user("janitor", perms=VIEW + DELETE)
    message = failed_message()
    body = text_of(client.get(reverse(PUB_LIST)))
    assert 'value="delete_selected"' in body
    assert 'value="requeue"' not in body
    client.post(reverse(PUB_LIST), {"action": "delete_selected",
                                    "_selected_action": [str(message.pk)], "post": "yes"})
    assert not PublishedMessage.objects.filter(pk=message.pk).exists()
    assert not ReceivedMessage.objects.filter(message_id=message.pk).exists()


# --- actions ------------------------------------------------------------------------------------


def test_requeue_runs_a_failed_receipt_again_until_it_succeeds(
    operator: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    from integration_events import operations

    calls: list[Any] = []
    real = operations.requeue_published

    def spy(items: Any, using: str = "default") -> int:
        calls.append(list(items))
        return real(items, using=using)

    monkeypatch.setattr(operations, "requeue_published", spy)
    message = failed_message()
    receipt = ReceivedMessage.objects.get(message=message, group="probe-a")
    assert receipt.status == MessageStatus.FAILED
    # The bug in the handler is fixed and deployed; the operator requeues the dead letter.
    monkeypatch.setattr("tests.eventapp.subscribers.behave", lambda event, context: None)
    response = operator.post(reverse(PUB_LIST), {
        "action": "requeue", "_selected_action": [str(message.pk)],
    }, follow=True)
    assert "1 message(s) requeued" in text_of(response)
    assert calls == [[message.pk]]
    receipt.refresh_from_db()
    assert receipt.status == MessageStatus.PENDING
    assert receipt.attempts == 0
    deliver_pending()
    receipt.refresh_from_db()
    assert receipt.status == MessageStatus.SUCCEEDED
    assert receipt.attempts == 1


def test_requeue_skips_messages_in_flight(operator: Client) -> None:
    message = publish(ProbeHappened(n=1))
    response = operator.post(reverse(PUB_LIST), {
        "action": "requeue", "_selected_action": [str(message.pk)],
    }, follow=True)
    assert "0 message(s) requeued" in text_of(response)
    assert "1 selected message(s) skipped" in text_of(response)


def test_publish_now_makes_a_delayed_message_due(operator: Client) -> None:
    message = publish(ProbeHappened(n=1), delay=3600)
    assert deliver_pending().dispatched == 0
    operator.post(reverse(PUB_LIST), {
        "action": "publish_now", "_selected_action": [str(message.pk)],
    })
    assert deliver_pending().dispatched == 1
    message.refresh_from_db()
    assert message.status == MessageStatus.SUCCEEDED


def test_reexecute_runs_a_received_message_again(operator: Client) -> None:
    from tests.eventapp.models import Delivery

    message = publish(ProbeHappened(n=1))
    deliver_pending()
    receipt = ReceivedMessage.objects.get(message=message, group="probe-b")
    assert Delivery.objects.filter(group="probe-b").count() == 1
    response = operator.post(reverse(RECV_LIST), {
        "action": "reexecute", "_selected_action": [str(receipt.pk)],
    }, follow=True)
    assert "1 message(s) queued to run again" in text_of(response)
    deliver_pending()
    assert Delivery.objects.filter(group="probe-b").count() == 2
    assert Delivery.objects.filter(group="probe-a").count() == 1


# --- lists: filters, search, counts -------------------------------------------------------------


def test_topic_filter_choices_come_from_the_registry(admin_client_: Client) -> None:
    with CaptureQueriesContext(connection) as queries:
        body = text_of(admin_client_.get(reverse(PUB_LIST)))
    # A declared topic nobody ever published is offered, without reading the table for it.
    assert "?topic=probe.lonely-happened" in body
    assert not [q for q in queries.captured_queries if "DISTINCT" in q["sql"].upper()]


def test_filters_by_status_topic_group_and_date(admin_client_: Client) -> None:
    failed = failed_message()
    ok = publish(ProbeHappened(n=2))
    old = publish(ProbeHappened(n=3))
    PublishedMessage.objects.filter(pk=old.pk).update(
        created_at=timezone.now() - timedelta(days=40))

    def ids(url: str, **params: str) -> set[str]:
        response = admin_client_.get(reverse(url), params)
        assert response.status_code == 200
        return {str(o.pk) for o in response.context["cl"].result_list}

    assert ids(PUB_LIST, status="pending") == {str(ok.pk), str(old.pk)}
    assert ids(PUB_LIST, topic="probe.lonely-happened") == set()
    assert ids(PUB_LIST, topic=ProbeHappened.topic) == {str(failed.pk), str(ok.pk), str(old.pk)}
    # The "Past 7 days" link of the date filter.
    today = timezone.localtime().replace(hour=0, minute=0, second=0, microsecond=0)
    week = {"created_at__gte": str(today - timedelta(days=7)),
            "created_at__lt": str(today + timedelta(days=1))}
    assert ids(PUB_LIST, **week) == {str(failed.pk), str(ok.pk)}
    failed_receipt = ReceivedMessage.objects.get(message=failed, group="probe-a")
    assert ids(RECV_LIST, group="probe-a", status="failed") == {str(failed_receipt.pk)}


def test_search_by_id_topic_and_explicit_content(admin_client_: Client) -> None:
    target = publish(ProbeHappened(n=1, text="needle-in-payload"))
    other = publish(ProbeHappened(n=2))
    deliver_pending()

    def ids(url: str, q: str) -> set[str]:
        response = admin_client_.get(reverse(url), {"q": q})
        assert response.status_code == 200
        return {str(o.pk) for o in response.context["cl"].result_list}

    assert ids(PUB_LIST, str(target.pk)) == {str(target.pk)}
    assert ids(PUB_LIST, str(target.pk).upper()) == {str(target.pk)}
    assert ids(PUB_LIST, str(target.correlation_id)) == {str(target.pk)}
    assert ids(PUB_LIST, "probe-happ") == {str(target.pk), str(other.pk)}
    assert ids(PUB_LIST, "topic:lonely") == set()
    # Payload text is not searched unless asked for (a full scan on a big table).
    assert ids(PUB_LIST, "needle-in-payload") == set()
    assert ids(PUB_LIST, "content:needle-in-payload") == {str(target.pk)}
    receipts = {str(r.pk) for r in ReceivedMessage.objects.filter(message=target)}
    assert len(receipts) == 2
    assert ids(RECV_LIST, str(target.pk)) == receipts
    assert ids(RECV_LIST, "content:needle-in-payload") == receipts


def test_search_by_id_uses_the_key(admin_client_: Client) -> None:
    target = publish(ProbeHappened(n=1))
    with CaptureQueriesContext(connection) as queries:
        admin_client_.get(reverse(PUB_LIST), {"q": str(target.pk)})
    sql = " ".join(q["sql"] for q in queries.captured_queries if "content" in q["sql"])
    assert "LIKE" not in sql.upper()


def test_list_pages_never_count_the_whole_table(admin_client_: Client) -> None:
    for n in range(3):
        publish(ProbeHappened(n=n))
    deliver_pending()
    for url in (PUB_LIST, RECV_LIST):
        with CaptureQueriesContext(connection) as queries:
            response = admin_client_.get(reverse(url))
        assert response.status_code == 200
        counts = [q["sql"] for q in queries.captured_queries if "COUNT(" in q["sql"].upper()]
        assert counts, "the paginator counts (a bounded count)"
        assert all("LIMIT" in sql.upper() for sql in counts), counts


def test_paginator_counts_exactly_up_to_its_limit_then_estimates(
    admin_client_: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    for n in range(7):
        publish(ProbeHappened(n=n))
    monkeypatch.setattr(EstimatedCountPaginator, "exact_limit", 10)
    paginator = EstimatedCountPaginator(PublishedMessage.objects.order_by("-created_at"), 2)
    assert paginator.count == 7
    assert not paginator.estimated
    monkeypatch.setattr(EstimatedCountPaginator, "exact_limit", 5)
    paginator = EstimatedCountPaginator(PublishedMessage.objects.order_by("-created_at"), 2)
    assert paginator.count >= 6
    assert paginator.estimated
    response = admin_client_.get(reverse(PUB_LIST))
    assert "about" in text_of(response)


def test_sorting_is_limited_to_indexed_columns(admin_client_: Client) -> None:
    response = admin_client_.get(reverse(PUB_LIST))
    assert response.context["cl"].sortable_by == ("created_at",)


# --- detail pages -------------------------------------------------------------------------------


def test_published_detail_shows_payload_headers_chain_and_receipts(admin_client_: Client) -> None:
    cause = failed_message(n=7)
    child = PublishedMessage.objects.create(
        id=uuid7(), topic=ProbeHappened.topic, content='{"n": 8}', headers={},
        correlation_id=cause.correlation_id, correlation_sequence=1, causation_id=cause.pk)
    body = text_of(admin_client_.get(
        reverse("admin:integration_events_publishedmessage_change", args=[cause.pk])))
    assert "&quot;n&quot;: 7" in body  # pretty JSON
    assert "&quot;behaviour&quot;: &quot;fail&quot;" in body
    assert "correlation-id" in body and str(cause.correlation_id) in body
    assert "first message of its chain" in body
    assert reverse("admin:integration_events_publishedmessage_change", args=[child.pk]) in body
    for receipt in ReceivedMessage.objects.filter(message=cause):
        assert reverse("admin:integration_events_receivedmessage_change",
                       args=[receipt.pk]) in body
    assert "probe-a" in body and "probe-b" in body
    child_body = text_of(admin_client_.get(
        reverse("admin:integration_events_publishedmessage_change", args=[child.pk])))
    assert reverse("admin:integration_events_publishedmessage_change",
                   args=[cause.pk]) in child_body


def test_received_detail_shows_error_and_traceback(admin_client_: Client) -> None:
    message = failed_message()
    receipt = ReceivedMessage.objects.get(message=message, group="probe-a")
    body = text_of(admin_client_.get(
        reverse("admin:integration_events_receivedmessage_change", args=[receipt.pk])))
    assert "RuntimeError: probe 1 fails on attempt 3" in body
    assert "Traceback (most recent call last)" in body
    assert "tests/eventapp/subscribers.py" in body
    assert "tests.eventapp.subscribers.probe_a" in body


def test_html_in_payload_headers_and_errors_is_escaped_everywhere(admin_client_: Client) -> None:
    message = publish(ProbeHappened(n=1, behaviour="permanent", only_group="probe-a", text=XSS),
                      headers={"x-note": XSS})
    deliver_pending()
    receipt = ReceivedMessage.objects.get(message=message, group="probe-a")
    ReceivedMessage.objects.filter(pk=receipt.pk).update(last_error=f"Boom: {XSS}\n\n{XSS}")
    PublishedMessage.objects.filter(pk=message.pk).update(last_error=f"Err: {XSS}")
    pages = [
        reverse("admin:integration_events_publishedmessage_change", args=[message.pk]),
        reverse("admin:integration_events_receivedmessage_change", args=[receipt.pk]),
        reverse(PUB_LIST), reverse(RECV_LIST), reverse(OVERVIEW), reverse(SUBSCRIBERS),
        reverse(NODES), reverse(PUB_LIST) + "?q=content:alert",
    ]
    for url in pages:
        body = text_of(admin_client_.get(url))
        assert "<script>alert" not in body, url
        assert '<b onmouseover="evil()"' not in body, url
    detail = text_of(admin_client_.get(pages[0]))
    assert XSS_ESCAPED.replace("&quot;", '\\&quot;') in detail  # inside the JSON string
    assert XSS_ESCAPED in detail  # the header value
    assert XSS_ESCAPED in text_of(admin_client_.get(pages[1]))


# --- subscribers and nodes ----------------------------------------------------------------------


@pytest.fixture
def stray_subscriber() -> Any:
    def handler(event: Any) -> None: ...

    subscriber("nobody.declares-this", group="stray")(handler)
    yield handler
    unregister("nobody.declares-this", "stray")


def test_subscribers_page_lists_topics_groups_handlers_and_policies(
    admin_client_: Client, stray_subscriber: Callable[..., Any]
) -> None:
    response = admin_client_.get(reverse(SUBSCRIBERS))
    body = text_of(response)
    assert "probe.probe-happened" in body
    assert "tests.eventapp.events.ProbeHappened" in body
    assert "tests.eventapp.subscribers.probe_a" in body
    assert "tests.eventapp.subscribers.probe_b" in body
    assert "3 attempts, backoff 0.5 s doubling up to 5.0 s" in body  # tests/settings.py
    assert "&quot;behaviour&quot;" in body  # the JSON schema
    orphaned = [t.topic for t in response.context["orphaned"]]
    undeclared = [t.topic for t in response.context["undeclared"]]
    assert "probe.lonely-happened" in orphaned
    assert "probe.probe-happened" not in orphaned
    assert undeclared == ["nobody.declares-this"]
    assert 'class="ie-topic ie-warn ie-orphaned" data-topic="probe.lonely-happened"' in body
    assert 'class="ie-topic ie-err ie-undeclared" data-topic="nobody.declares-this"' in body


def test_nodes_page_shows_heartbeats_and_claims_held(admin_client_: Client) -> None:
    WorkerNode.objects.create(name="alpha:100", hostname="alpha", pid=100)
    WorkerNode.objects.create(name="beta:200", hostname="beta", pid=200,
                              last_seen_at=timezone.now() - timedelta(hours=1))
    message = publish(ProbeHappened(n=1))
    PublishedMessage.objects.filter(pk=message.pk).update(
        status=MessageStatus.PROCESSING, claimed_by="alpha:101", lease_token=uuid.uuid4(),
        lease_until=timezone.now() + timedelta(seconds=30))
    exact = publish(ProbeHappened(n=4))
    PublishedMessage.objects.filter(pk=exact.pk).update(
        status=MessageStatus.PROCESSING, claimed_by="beta:200/201", lease_token=uuid.uuid4(),
        lease_until=timezone.now() + timedelta(seconds=30))
    orphan = publish(ProbeHappened(n=2))
    PublishedMessage.objects.filter(pk=orphan.pk).update(
        status=MessageStatus.PROCESSING, claimed_by="gamma:5", lease_token=uuid.uuid4(),
        lease_until=timezone.now() + timedelta(seconds=30))
    response = admin_client_.get(reverse(NODES))
    body = text_of(response)
    nodes = {i.node.name: i for i in response.context["nodes"]}
    assert nodes["alpha:100"].held == 1
    assert not nodes["alpha:100"].stale
    # A stale node still owns the claims that name it exactly.
    assert nodes["beta:200"].stale and nodes["beta:200"].held == 1
    assert [c.worker for c in response.context["unassigned"]] == ["gamma:5"]
    assert "alpha:101" in body and "stale" in body


def test_main_admin_index_lists_the_dashboard_for_viewers_only(
    admin_client_: Client, viewer: Client
) -> None:
    dashboard_list = reverse("admin:integration_events_dashboard_changelist")
    for client in (admin_client_, viewer):
        assert dashboard_list in text_of(client.get(reverse("admin:index")))
        response = client.get(dashboard_list)
        assert response.status_code == 302 and response["Location"] == reverse(OVERVIEW)
    nobody = make_user("no-perms")
    assert dashboard_list not in text_of(nobody.get(reverse("admin:index")))
    assert nobody.get(dashboard_list).status_code == 403


def test_app_index_links_the_dashboard(admin_client_: Client) -> None:
    body = text_of(admin_client_.get(reverse("admin:app_list", args=["integration_events"])))
    for name in (OVERVIEW, SUBSCRIBERS, NODES):
        assert reverse(name) in body
    assert reverse(OVERVIEW) in text_of(admin_client_.get(reverse(PUB_LIST)))


@pytest.mark.skipif(not hasattr(admin, "ActionLocation"),
                    reason="actions on the change form need Django 6.1")
def test_detail_page_offers_the_actions_for_its_message(operator: Client,
                                                        viewer: Client) -> None:
    message = failed_message()
    receipt = ReceivedMessage.objects.get(message=message, group="probe-a")
    url = reverse("admin:integration_events_receivedmessage_change", args=[receipt.pk])
    assert 'value="reexecute"' not in text_of(viewer.get(url))
    assert 'value="reexecute"' in text_of(operator.get(url))
    # A viewer posting the detail page's action does nothing.
    viewer.post(url, {"CHANGE_FORM-action": "reexecute", "_selected_action": str(receipt.pk)})
    receipt.refresh_from_db()
    assert receipt.status == MessageStatus.FAILED
    response = operator.post(url, {"CHANGE_FORM-action": "reexecute",
                                   "_selected_action": str(receipt.pk)}, follow=True)
    assert "1 message(s) queued to run again" in text_of(response)
    assert response.redirect_chain[-1][0].endswith(url)
    receipt.refresh_from_db()
    assert receipt.status == MessageStatus.PENDING
    pub_body = text_of(operator.get(
        reverse("admin:integration_events_publishedmessage_change", args=[message.pk])))
    assert 'value="requeue"' in pub_body and 'value="publish_now"' in pub_body


def test_facet_counts_are_never_offered(admin_client_: Client) -> None:
    publish(ProbeHappened(n=1))
    with CaptureQueriesContext(connection) as queries:
        response = admin_client_.get(reverse(PUB_LIST), {"_facets": "True"})
    assert response.status_code == 200
    assert "Show counts" not in text_of(response)
    counts = [q["sql"] for q in queries.captured_queries if "COUNT(" in q["sql"].upper()]
    assert all("LIMIT" in sql.upper() for sql in counts), counts


def test_actions_hand_big_selections_over_in_batches(
    operator: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    from integration_events import admin as ie_admin
    from integration_events import operations

    monkeypatch.setattr(ie_admin, "ACTION_BATCH_SIZE", 2)
    batches: list[int] = []
    real = operations.publish_now

    def spy(items: Any, using: str = "default") -> int:
        batches.append(len(list(items)))
        return real(items, using=using)

    monkeypatch.setattr(operations, "publish_now", spy)
    messages = [publish(ProbeHappened(n=n), delay=3600) for n in range(5)]
    response = operator.post(reverse(PUB_LIST), {
        "action": "publish_now", "select_across": "1", "index": "0",
        "_selected_action": [str(m.pk) for m in messages],
    }, follow=True)
    assert "5 message(s) made due now" in text_of(response)
    assert batches == [2, 2, 1]
    assert deliver_pending().dispatched == 5


def test_charts_are_escaped_svg_without_external_references() -> None:
    from integration_events.dashboard import format_age, svg_chart

    svg = svg_chart({"published": [0.0, 2.5, 1.0], "<b>x</b>": [1.0, 0.0, 3.0]},
                    ["a", "<script>", "c"], title="t <img src=x onerror=alert(1)>")
    assert svg.startswith('<svg xmlns="http://www.w3.org/2000/svg"')
    assert "<script>" not in svg and "<img" not in svg and "<b>" not in svg
    assert "&lt;script&gt;" in svg and "&lt;b&gt;x&lt;/b&gt;" in svg
    assert "href" not in svg and "url(" not in svg
    assert svg.count("<polyline") == 2
    assert format_age(None) == "none"
    assert format_age(59) == "59 s"
    assert format_age(3725) == "1 h 2 min"
