"""The message admins: lists, filters, search, detail pages, permissions and actions."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.contrib import admin
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
    uuid7,
)
from integration_events.testing import deliver_pending
from tests.admin_helpers import (
    CHANGE,
    DASHBOARD_PAGES,
    DELETE,
    LIST_PAGES,
    LIVE,
    NODES,
    OVERVIEW,
    PUB_LIST,
    RECV_LIST,
    SUBSCRIBERS,
    VIEW,
    XSS,
    XSS_ESCAPED,
    failed_message,
    make_user,
    text_of,
)
from tests.eventapp.events import ProbeHappened

pytest_plugins = ["tests.admin_fixtures"]
pytestmark = pytest.mark.django_db


# --- badges and read-only -------------------------------------------------------------------------


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


# --- permissions (the message lists and the dashboard pages alike) --------------------------------

EVERY_PAGE = (*LIST_PAGES, *DASHBOARD_PAGES)


@pytest.mark.parametrize("page", EVERY_PAGE)
def test_anonymous_gets_nothing(page: str) -> None:
    publish(ProbeHappened(n=1, text="secret-payload"))
    response = Client().get(reverse(page))
    assert response.status_code == 302
    assert "/login/" in response["Location"]
    assert b"secret-payload" not in response.content


@pytest.mark.parametrize("page", EVERY_PAGE)
def test_non_staff_gets_nothing_even_with_permissions(page: str) -> None:
    client = make_user("outsider", staff=False, perms=VIEW + CHANGE + DELETE)
    response = client.get(reverse(page))
    assert response.status_code == 302
    assert "/login/" in response["Location"]


@pytest.mark.parametrize("page", EVERY_PAGE)
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


# --- actions --------------------------------------------------------------------------------------


def test_requeue_runs_a_failed_receipt_again_until_it_succeeds(
    operator: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    from integration_events import operations

    calls: list[Any] = []
    real = operations.requeue_published

    def spy(items: Any, using: str = "default", **kwargs: Any) -> int:
        calls.append(list(items))
        return real(items, using=using, **kwargs)

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


def test_actions_hand_big_selections_over_in_batches(
    operator: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    from integration_events import operations
    from integration_events.admin import actions

    monkeypatch.setattr(actions, "ACTION_BATCH_SIZE", 2)
    batches: list[int] = []
    real = operations.publish_now

    def spy(items: Any, using: str = "default", **kwargs: Any) -> int:
        batches.append(len(list(items)))
        return real(items, using=using, **kwargs)

    monkeypatch.setattr(operations, "publish_now", spy)
    messages = [publish(ProbeHappened(n=n), delay=3600) for n in range(5)]
    response = operator.post(reverse(PUB_LIST), {
        "action": "publish_now", "select_across": "1", "index": "0",
        "_selected_action": [str(m.pk) for m in messages],
    }, follow=True)
    assert "5 message(s) made due now" in text_of(response)
    assert batches == [2, 2, 1]
    assert deliver_pending().dispatched == 5


# --- lists: filters, search, counts ---------------------------------------------------------------


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

    assert ids(PUB_LIST, status__exact="pending") == {str(ok.pk), str(old.pk)}
    assert ids(PUB_LIST, topic="probe.lonely-happened") == set()
    assert ids(PUB_LIST, topic=ProbeHappened.topic) == {str(failed.pk), str(ok.pk), str(old.pk)}
    # The "Past 7 days" link of the date filter.
    today = timezone.localtime().replace(hour=0, minute=0, second=0, microsecond=0)
    week = {"created_at__gte": str(today - timedelta(days=7)),
            "created_at__lt": str(today + timedelta(days=1))}
    assert ids(PUB_LIST, **week) == {str(failed.pk), str(ok.pk)}
    failed_receipt = ReceivedMessage.objects.get(message=failed, group="probe-a")
    assert ids(RECV_LIST, group="probe-a", status__exact="failed") == {str(failed_receipt.pk)}


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
    assert response.context["cl"].sortable_by == ("created",)


def test_facet_counts_are_never_offered(admin_client_: Client) -> None:
    publish(ProbeHappened(n=1))
    with CaptureQueriesContext(connection) as queries:
        response = admin_client_.get(reverse(PUB_LIST), {"_facets": "True"})
    assert response.status_code == 200
    assert "Show counts" not in text_of(response)
    counts = [q["sql"] for q in queries.captured_queries if "COUNT(" in q["sql"].upper()]
    assert all("LIMIT" in sql.upper() for sql in counts), counts


# --- detail pages ---------------------------------------------------------------------------------


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
    assert "tests.<wbr>eventapp.<wbr>subscribers.<wbr>probe_a" in body


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


# --- errors shown as what they are ----------------------------------------------------------------


def test_a_succeeded_row_shows_an_earlier_error_as_history(admin_client_: Client) -> None:
    message = publish(ProbeHappened(n=1, behaviour="fail:1", only_group="probe-a"))
    deliver_pending(include_delayed=True)
    receipt = ReceivedMessage.objects.get(message=message, group="probe-a")
    assert receipt.status == MessageStatus.SUCCEEDED
    assert receipt.last_error.startswith("RuntimeError: probe 1 fails on attempt 1")
    detail = text_of(admin_client_.get(
        reverse("admin:integration_events_receivedmessage_change", args=[receipt.pk])))
    assert 'class="ie-error"' not in detail
    assert "Earlier attempt" in detail
    assert "RuntimeError: probe 1 fails on attempt 1" in detail
    listing = text_of(admin_client_.get(reverse(RECV_LIST), {"group": "probe-a"}))
    assert 'class="ie-history"' in listing
    assert 'class="ie-error"' not in listing
    # A row that failed keeps its error as the error.
    failed = ReceivedMessage.objects.get(message=failed_message(n=2), group="probe-a")
    failed_detail = text_of(admin_client_.get(
        reverse("admin:integration_events_receivedmessage_change", args=[failed.pk])))
    assert 'class="ie-error"' in failed_detail


def test_no_subscribers_is_a_note_not_an_error(admin_client_: Client) -> None:
    from tests.eventapp.events import LonelyHappened

    message = publish(LonelyHappened(n=1))
    deliver_pending()
    message.refresh_from_db()
    assert message.status == MessageStatus.SUCCEEDED
    assert message.last_error == "", "nothing to deliver is an outcome, not an error"
    detail = text_of(admin_client_.get(
        reverse("admin:integration_events_publishedmessage_change", args=[message.pk])))
    assert "no subscribers" in detail
    for url in (reverse("admin:integration_events_publishedmessage_change", args=[message.pk]),
                reverse(PUB_LIST)):
        assert 'class="ie-error"' not in text_of(admin_client_.get(url)), url
    # A row an older version stored with that text shows it as a note, not an error.
    PublishedMessage.objects.filter(pk=message.pk).update(
        last_error="no subscribers: nothing to deliver")
    for url in (reverse("admin:integration_events_publishedmessage_change", args=[message.pk]),
                reverse(PUB_LIST)):
        body = text_of(admin_client_.get(url))
        assert 'class="ie-error"' not in body and 'class="ie-note"' in body, url


def test_one_date_format_on_every_page(admin_client_: Client) -> None:
    from integration_events.models import WorkerNode

    message = failed_message()
    message.refresh_from_db()
    receipt = ReceivedMessage.objects.get(message=message, group="probe-a")
    node = WorkerNode.objects.create(name="alpha:1", hostname="alpha", pid=1)
    node.refresh_from_db()

    def stamp(value: Any) -> str:
        return timezone.localtime(value).strftime("%Y-%m-%d %H:%M:%S")

    pages = {
        reverse(PUB_LIST): stamp(message.created_at),
        reverse("admin:integration_events_publishedmessage_change", args=[message.pk]):
            stamp(message.created_at),
        reverse(RECV_LIST): stamp(receipt.created_at),
        reverse("admin:integration_events_receivedmessage_change", args=[receipt.pk]):
            stamp(receipt.finished_at),
        reverse(NODES): stamp(node.last_seen_at),
        reverse("admin:integration_events_workernode_changelist"): stamp(node.last_seen_at),
    }
    for url, expected in pages.items():
        body = text_of(admin_client_.get(url))
        assert expected in body, url
        assert "a.m." not in body and "p.m." not in body, url


# --- input that must never break a page -----------------------------------------------------------


@pytest.mark.parametrize("headers, content", [
    ([1, 2], "{}"),
    ("just a string", "not json at all"),
    (5, "[" * 100_000),
    ({"x-ok": 1}, "[" * 100_000 + "]" * 100_000),
])
def test_detail_pages_show_rows_whatever_their_headers_and_content(
    admin_client_: Client, headers: Any, content: str
) -> None:
    message = failed_message()
    PublishedMessage.objects.filter(pk=message.pk).update(headers=headers, content=content)
    receipt = ReceivedMessage.objects.get(message=message, group="probe-a")
    for url in (reverse("admin:integration_events_publishedmessage_change", args=[message.pk]),
                reverse("admin:integration_events_receivedmessage_change", args=[receipt.pk])):
        response = admin_client_.get(url)
        assert response.status_code == 200, url
        body = text_of(response)
        assert str(message.pk) in body
        assert content[:50] in body  # shown as stored


@pytest.mark.parametrize("term", ["²", "9" * 5000])
def test_received_search_for_a_number_that_is_no_row_id_finds_nothing(
    admin_client_: Client, term: str
) -> None:
    failed_message()
    response = admin_client_.get(reverse(RECV_LIST), {"q": term})
    assert response.status_code == 200
    assert list(response.context["cl"].result_list) == []


@pytest.mark.parametrize("url, params", [
    (PUB_LIST, {"topic": "\x00"}),
    (RECV_LIST, {"group": "\x00"}),
    (RECV_LIST, {"topic": "probe\x00"}),
    (PUB_LIST, {"status__exact": "\x00"}),
    (PUB_LIST, {"q": "\x00"}),
    (RECV_LIST, {"q": "content:\x00"}),
])
def test_nul_characters_in_filters_and_searches_are_refused_with_a_message(
    admin_client_: Client, url: str, params: dict[str, str]
) -> None:
    failed_message()
    response = admin_client_.get(reverse(url), params, follow=True)
    assert response.status_code == 200
    assert "NUL character" in text_of(response)


@pytest.mark.parametrize("url", [PUB_LIST, RECV_LIST])
@pytest.mark.parametrize("term", ["content:" + "a" * 50_000, "x" * 1_000_000])
def test_a_huge_search_term_is_refused_with_a_message_and_not_echoed(
    admin_client_: Client, url: str, term: str
) -> None:
    failed_message()
    response = admin_client_.get(reverse(url), {"q": term})
    assert response.status_code == 200
    body = text_of(response)
    assert "too long" in body
    assert list(response.context["cl"].result_list) == []
    assert len(body) < 100_000


# --- only the filters and orderings the admin offers ----------------------------------------------


@pytest.mark.parametrize("url, params", [
    (PUB_LIST, {"content__regex": "(a+)+$"}),
    (PUB_LIST, {"attempts__gt": "1"}),
    (PUB_LIST, {"last_error__icontains": "boom"}),
    (RECV_LIST, {"handler__startswith": "tests"}),
    (RECV_LIST, {"status": "failed"}),
])
def test_lookups_the_admin_does_not_offer_are_refused(
    viewer: Client, url: str, params: dict[str, str]
) -> None:
    failed_message()
    with CaptureQueriesContext(connection) as queries:
        response = viewer.get(reverse(url), params)
    assert response.status_code == 400
    assert not [q for q in queries.captured_queries if "integration_events_" in q["sql"]
                and any(word in q["sql"].upper() for word in ("REGEXP", "~", "LIKE"))]


@pytest.mark.parametrize("url", [PUB_LIST, RECV_LIST])
def test_only_the_offered_ordering_is_applied(viewer: Client, url: str) -> None:
    failed_message()
    for index in range(1, 10):
        with CaptureQueriesContext(connection) as queries:
            response = viewer.get(reverse(url), {"o": str(index)})
        assert response.status_code == 200
        ordered = [q["sql"].upper().split("ORDER BY", 1)[1] for q in queries.captured_queries
                   if "ORDER BY" in q["sql"].upper() and "integration_events_" in q["sql"]]
        assert ordered, index
        for clause in ordered:
            for column in ("ATTEMPTS", "TOPIC", "STATUS", "GROUP", "NEXT_ATTEMPT_AT", "LAST_ERROR"):
                assert f'."{column}"' not in clause and f".`{column}`" not in clause, (
                    index, clause)


# --- permissions across the two message models ----------------------------------------------------

PUB_VIEW, RECV_VIEW = "view_publishedmessage", "view_receivedmessage"
PUB_CHANGE, RECV_CHANGE = "change_publishedmessage", "change_receivedmessage"
PUB_DELETE, RECV_DELETE = "delete_publishedmessage", "delete_receivedmessage"


def receipt_of(message: PublishedMessage, group: str = "probe-a") -> ReceivedMessage:
    return ReceivedMessage.objects.get(message=message, group=group)


@pytest.mark.parametrize("perms, payload_shown", [
    ((RECV_VIEW,), False),
    ((RECV_VIEW, PUB_VIEW), True),
])
def test_a_received_rows_payload_needs_view_on_published(
    perms: tuple[str, ...], payload_shown: bool
) -> None:
    client = make_user("someone", perms=perms)
    message = publish(ProbeHappened(n=1, text="secret-payload"), headers={"x-secret": "hdr"})
    deliver_pending()
    body = text_of(client.get(reverse("admin:integration_events_receivedmessage_change",
                                      args=[receipt_of(message).pk])))
    assert ("secret-payload" in body) is payload_shown
    assert ("x-secret" in body) is payload_shown
    link = reverse("admin:integration_events_publishedmessage_change", args=[message.pk])
    assert (link in body) is payload_shown
    if not payload_shown:
        assert "view permission on published messages" in body
    # Searching payloads from the received list is showing them too.
    response = client.get(reverse(RECV_LIST), {"q": "content:secret-payload"})
    assert (len(response.context["cl"].result_list) == 2) is payload_shown


@pytest.mark.parametrize("perms, receipts_shown", [
    ((PUB_VIEW,), False),
    ((PUB_VIEW, RECV_VIEW), True),
])
def test_a_published_messages_receipts_need_view_on_received(
    perms: tuple[str, ...], receipts_shown: bool
) -> None:
    client = make_user("someone", perms=perms)
    message = failed_message()
    body = text_of(client.get(reverse("admin:integration_events_publishedmessage_change",
                                      args=[message.pk])))
    assert ("tests.<wbr>eventapp.<wbr>subscribers.<wbr>probe_a" in body) is receipts_shown
    assert ("RuntimeError: probe 1 fails" in body) is receipts_shown
    if not receipts_shown:
        assert "view permission on received messages" in body


@pytest.mark.parametrize("perms, receipts_reset", [
    ((PUB_VIEW, RECV_VIEW, PUB_CHANGE), False),
    ((PUB_VIEW, RECV_VIEW, PUB_CHANGE, RECV_CHANGE), True),
])
def test_requeuing_a_succeeded_message_needs_change_on_received(
    perms: tuple[str, ...], receipts_reset: bool
) -> None:
    client = make_user("someone", perms=perms)
    succeeded = failed_message()  # dispatched (succeeded); its probe-a row failed
    undelivered = publish(ProbeHappened(n=2))
    PublishedMessage.objects.filter(pk=undelivered.pk).update(status=MessageStatus.FAILED)
    response = client.post(reverse(PUB_LIST), {
        "action": "requeue", "_selected_action": [str(succeeded.pk), str(undelivered.pk)],
    }, follow=True)
    body = text_of(response)
    # A failed dispatch is the published message's own business: requeued either way.
    assert PublishedMessage.objects.get(pk=undelivered.pk).status == MessageStatus.PENDING
    assert (receipt_of(succeeded).status == MessageStatus.PENDING) is receipts_reset
    if receipts_reset:
        assert "2 message(s) requeued" in body
    else:
        assert "1 message(s) requeued" in body
        assert "change permission on received messages" in body
        assert receipt_of(succeeded).status == MessageStatus.FAILED


@pytest.mark.parametrize("perms, offered", [
    ((PUB_VIEW, RECV_VIEW, PUB_CHANGE), {"requeue", "publish_now"}),
    ((PUB_VIEW, RECV_VIEW, RECV_CHANGE), {"reexecute"}),
    ((PUB_VIEW, RECV_VIEW, PUB_DELETE, RECV_DELETE), {"delete_selected"}),
])
def test_each_action_is_offered_with_its_own_permission(
    perms: tuple[str, ...], offered: set[str]
) -> None:
    client = make_user("someone", perms=perms)
    found = set()
    for url in (PUB_LIST, RECV_LIST):
        body = text_of(client.get(reverse(url)))
        found |= {name for name in ("requeue", "publish_now", "reexecute", "delete_selected")
                  if f'value="{name}"' in body}
    assert found == offered


@pytest.mark.parametrize("perms, deleted", [
    ((PUB_VIEW, RECV_VIEW, PUB_DELETE), False),
    ((PUB_VIEW, RECV_VIEW, PUB_DELETE, RECV_DELETE), True),
])
def test_deleting_a_published_message_needs_delete_on_received_too(
    perms: tuple[str, ...], deleted: bool
) -> None:
    client = make_user("someone", perms=perms)
    message = failed_message()
    client.post(reverse(PUB_LIST), {"action": "delete_selected",
                                    "_selected_action": [str(message.pk)], "post": "yes"})
    assert PublishedMessage.objects.filter(pk=message.pk).exists() is not deleted
    assert ReceivedMessage.objects.filter(message_id=message.pk).exists() is not deleted


# --- audit: every action in each message's history ------------------------------------------------


def history_of(client: Client, obj: Any) -> str:
    name = obj._meta.model_name
    return text_of(client.get(reverse(f"admin:integration_events_{name}_history",
                                      args=[obj.pk])))


def test_actions_are_written_to_each_messages_history(operator: Client) -> None:
    from django.contrib.admin.models import CHANGE as CHANGED
    from django.contrib.admin.models import LogEntry

    message = failed_message()
    receipt = receipt_of(message)
    running = publish(ProbeHappened(n=5))
    PublishedMessage.objects.filter(pk=running.pk).update(status=MessageStatus.PROCESSING)
    operator.post(reverse(RECV_LIST), {"action": "reexecute",
                                       "_selected_action": [str(receipt.pk)]})
    operator.post(reverse(PUB_LIST), {"action": "requeue",
                                      "_selected_action": [str(message.pk), str(running.pk)]})
    delayed = publish(ProbeHappened(n=3), delay=3600)
    operator.post(reverse(PUB_LIST), {"action": "publish_now",
                                      "_selected_action": [str(delayed.pk)]})
    entries = {(e.object_id, e.change_message) for e in LogEntry.objects.filter(
        user__username="operator", action_flag=CHANGED)}
    assert entries == {
        (str(receipt.pk), "Re-executed (was failed, 3 attempts)"),
        (str(message.pk), "Requeued (was succeeded)"),
        (str(delayed.pk), "Published now (was pending)"),
    }
    # The row being processed was skipped, and nothing says otherwise.
    assert not LogEntry.objects.filter(object_id=str(running.pk)).exists()
    assert "Requeued (was succeeded)" in history_of(operator, message)
    assert "Re-executed (was failed, 3 attempts)" in history_of(operator, receipt)
    assert "Published now (was pending)" in history_of(operator, delayed)


def test_deleting_a_message_logs_it_and_the_received_rows_deleted_with_it() -> None:
    from django.contrib.admin.models import DELETION, LogEntry

    client = make_user("janitor", perms=VIEW + DELETE)
    message = failed_message()
    receipts = {str(pk) for pk in ReceivedMessage.objects.filter(
        message=message).values_list("pk", flat=True)}
    client.post(reverse(PUB_LIST), {"action": "delete_selected",
                                    "_selected_action": [str(message.pk)], "post": "yes"})
    logged = set(LogEntry.objects.filter(action_flag=DELETION, user__username="janitor")
                 .values_list("object_id", flat=True))
    assert logged == {str(message.pk)} | receipts
