"""The dashboard: overview, live JSON, history, charts, subscribers and nodes pages."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.contrib.staticfiles import finders
from django.core.cache import cache
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from integration_events import publish
from integration_events.models import MessageStatus, PublishedMessage, WorkerNode, uuid7
from integration_events.registry import subscriber, unregister
from integration_events.testing import deliver_pending
from tests.admin_helpers import (
    LIVE,
    NODES,
    OVERVIEW,
    PUB_LIST,
    SUBSCRIBERS,
    VIEW,
    failed_message,
    make_user,
    text_of,
)
from tests.eventapp.events import ProbeHappened

pytest_plugins = ["tests.admin_fixtures"]
pytestmark = pytest.mark.django_db


# --- overview and live endpoint -------------------------------------------------------------------


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


def test_charts_are_escaped_svg_without_external_references() -> None:
    from django.template.loader import render_to_string

    from integration_events.dashboard import format_age, line_chart

    chart = line_chart({"published": [0.0, 2.5, 1.0], "<b>x</b>": [1.0, 0.0, 3.0]},
                       ["a", "<script>", "c"], title="t <img src=x onerror=alert(1)>")
    svg = render_to_string("integration_events/admin/_chart.html", {"chart": chart})
    assert svg.startswith('<svg xmlns="http://www.w3.org/2000/svg"')
    assert "<script>" not in svg and "<img" not in svg and "<b>" not in svg
    assert "&lt;script&gt;" in svg and "&lt;b&gt;x&lt;/b&gt;" in svg
    assert "href" not in svg and "url(" not in svg
    assert svg.count("<polyline") == 2
    assert format_age(None) == "none"
    assert format_age(59) == "59 s"
    assert format_age(3725) == "1 h 2 min"


@pytest.mark.parametrize("peak, whole, ticks", [
    (35, False, [0, 10, 20, 30, 40]),
    (75, False, [0, 20, 40, 60, 80]),
    (4, False, [0, 1, 2, 3, 4]),
    (0.1, False, [0, 0.02, 0.04, 0.06, 0.08, 0.1]),
    (434, True, [0, 100, 200, 300, 400, 500]),
    (0.7, False, [0, 0.2, 0.4, 0.6, 0.8]),
    (1, True, [0, 1]),
    (0, False, [0, 1]),
    (12_345, True, [0, 5000, 10_000, 15_000]),
])
def test_axis_ticks_are_round(peak: float, whole: bool, ticks: list[float]) -> None:
    from integration_events.dashboard import nice_ticks

    assert nice_ticks(peak, whole=whole) == ticks


@pytest.mark.parametrize("seconds, text", [
    (0.5, "0.5 s"), (5.0, "5 s"), (59, "59 s"), (90, "1 min 30 s"), (3600.0, "1 h"),
    (5400, "1 h 30 min"), (86400 * 2, "2 d"), (None, "-"),
])
def test_durations_read_like_a_person_wrote_them(seconds: float | None, text: str) -> None:
    from integration_events.admin.display import duration

    assert duration(seconds) == text


# --- permissions ----------------------------------------------------------------------------------


# --- subscribers and nodes ------------------------------------------------------------------------


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
    assert "tests.<wbr>eventapp.<wbr>events.<wbr>ProbeHappened" in body
    assert "tests.<wbr>eventapp.<wbr>subscribers.<wbr>probe_a" in body
    assert "tests.<wbr>eventapp.<wbr>subscribers.<wbr>probe_b" in body
    assert "3 attempts, backoff 0.5 s doubling up to 5 s" in body  # tests/settings.py
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
    assert nodes["alpha:100"].alive
    # A node that is not alive still owns the claims that name it exactly.
    assert not nodes["beta:200"].alive and nodes["beta:200"].held == 1
    assert [c.worker for c in response.context["unassigned"]] == ["gamma:5"]
    assert "alpha:101" in body and "not alive" in body


def test_main_admin_index_lists_the_dashboard_for_viewers_only(
    admin_client_: Client, viewer: Client
) -> None:
    dashboard_list = reverse("admin:integration_events_dashboard_changelist")
    # The Dashboard entry's own page is the overview.
    assert dashboard_list == reverse(OVERVIEW)
    for client in (admin_client_, viewer):
        assert dashboard_list in text_of(client.get(reverse("admin:index")))
        response = client.get(dashboard_list)
        assert response.status_code == 200 and 'id="ie-overview"' in text_of(response)
    nobody = make_user("no-perms")
    assert dashboard_list not in text_of(nobody.get(reverse("admin:index")))
    assert nobody.get(dashboard_list).status_code == 403


def test_app_index_links_the_dashboard(admin_client_: Client) -> None:
    body = text_of(admin_client_.get(reverse("admin:app_list", args=["integration_events"])))
    for name in (OVERVIEW, SUBSCRIBERS, NODES):
        assert reverse(name) in body
    assert reverse(OVERVIEW) in text_of(admin_client_.get(reverse(PUB_LIST)))


# --- is a cluster running? ------------------------------------------------------------------------


def no_cluster_banner(body: str) -> str | None:
    """The opening tag of the "no cluster alive" banner, or None if the page has none."""
    match = re.search(r'<div[^>]*id="ie-no-cluster"[^>]*>', body)
    return match.group(0) if match else None


def test_overview_says_plainly_when_no_cluster_is_alive(admin_client_: Client) -> None:
    banner = no_cluster_banner(text_of(admin_client_.get(reverse(OVERVIEW))))
    assert banner is not None and "hidden" not in banner
    node = WorkerNode.objects.create(name="alpha:1", hostname="alpha", pid=1)
    cache.clear()  # the live counts are cached for the poll interval
    banner = no_cluster_banner(text_of(admin_client_.get(reverse(OVERVIEW))))
    assert banner is not None and "hidden" in banner
    # Alive while the last beat is at most three HEARTBEAT_INTERVALs (30 s here) old.
    WorkerNode.objects.filter(pk=node.pk).update(
        last_seen_at=timezone.now() - timedelta(seconds=95))
    cache.clear()  # the live counts are cached for the poll interval
    body = text_of(admin_client_.get(reverse(OVERVIEW)))
    banner = no_cluster_banner(body)
    assert banner is not None and "hidden" not in banner
    assert "manage.py qcluster" in body
    assert json.loads(admin_client_.get(reverse(LIVE)).content)["alive_nodes"] == 0


def test_nodes_page_shows_alive_by_the_heartbeat_rule(admin_client_: Client, settings: Any
                                                     ) -> None:
    settings.INTEGRATION_EVENTS = {**settings.INTEGRATION_EVENTS, "HEARTBEAT_INTERVAL": 10}
    now = timezone.now()
    for name, age in (("fresh:1", 5), ("late:2", 25), ("gone:3", 45), ("old:4", 3600)):
        WorkerNode.objects.create(name=name, hostname=name.split(":")[0], pid=int(name[-1]),
                                  last_seen_at=now - timedelta(seconds=age))
    response = admin_client_.get(reverse(NODES))
    alive = {info.node.name: info.alive for info in response.context["nodes"]}
    assert alive == {"fresh:1": True, "late:2": True, "gone:3": False, "old:4": False}
    body = text_of(response)
    assert "not alive" in body and "30 s" in body  # the rule, stated on the page


# --- what the overview shows, and how ------------------------------------------------------------


def test_live_endpoint_refreshes_the_24_hour_section_too(admin_client_: Client) -> None:
    publish(ProbeHappened(n=1))
    deliver_pending()
    data = json.loads(admin_client_.get(reverse(LIVE)).content)
    assert data["history"]["totals"] == {"published": 1, "delivered": 2, "failed": 0}
    assert 'id="ie-history-chart"' in data["history_html"]
    assert sum(data["published"].values()) == 1


def test_overview_links_use_the_filter_sidebar_parameters(admin_client_: Client) -> None:
    failed_message()
    body = text_of(admin_client_.get(reverse(OVERVIEW)))
    assert "?status__exact=failed" in body
    assert not re.search(r"[?&;]status=", body)


@pytest.mark.parametrize("page", [OVERVIEW, SUBSCRIBERS, NODES])
def test_the_sidebar_highlights_the_dashboard_on_dashboard_pages(
    admin_client_: Client, page: str
) -> None:
    body = text_of(admin_client_.get(reverse(page)))
    assert "model-dashboard current-model" in body
    assert "model-publishedmessage current-model" not in body


def test_chart_axes_have_round_ticks(admin_client_: Client) -> None:
    PublishedMessage.objects.bulk_create(
        PublishedMessage(id=uuid7(), topic="probe.lonely-happened", content="{}",
                         correlation_id=uuid.uuid4())
        for _ in range(35)
    )
    body = text_of(admin_client_.get(reverse(OVERVIEW)))
    history = body.split('id="ie-history-chart"', 1)[1].split("</svg>", 1)[0]
    ticks = re.findall(r'<text[^>]*text-anchor="end"[^>]*>([^<]*)</text>', history)
    assert ticks == ["0", "10", "20", "30", "40"]


def test_charts_take_their_colours_from_the_admin_theme(admin_client_: Client) -> None:
    publish(ProbeHappened(n=1))
    body = text_of(admin_client_.get(reverse(OVERVIEW)))
    charts = "".join(part.split("</svg>", 1)[0] for part in body.split("<svg")[1:])
    assert charts
    # Only the series have colours of their own; the plot, grid, axes and legend text follow
    # the admin's CSS variables (light and dark).
    assert set(re.findall(r'(?:fill|stroke)="(#[0-9a-fA-F]+)"', charts)) <= {
        "#0d6efd", "#198754", "#dc3545"}
    assert "integration_events/admin/dashboard.css" in body
    css = Path(finders.find("integration_events/admin/dashboard.css")).read_text()
    rules = dict(re.findall(r"\.ie-chart ([.\w -]+)\{([^}]*)\}", css))
    assert "var(--darkened-bg" in rules[".ie-plot"]
    assert "var(--body-fg" in rules[".ie-legend text"]
    assert "var(--body-quiet-color" in rules[".ie-label"]  # and .ie-tick


def test_live_counts_are_cached_for_the_poll_interval(admin_client_: Client) -> None:
    failed_message()
    with CaptureQueriesContext(connection) as first:
        admin_client_.get(reverse(LIVE))
    with CaptureQueriesContext(connection) as second:
        admin_client_.get(reverse(LIVE))
    ours = [q for q in second.captured_queries if "integration_events_" in q["sql"]]
    assert len(first.captured_queries) > 10
    assert ours == []


# --- subscribers page -----------------------------------------------------------------------------


def test_subscribers_page_breaks_identifiers_at_dots_and_shows_round_delays(
    admin_client_: Client, settings: Any
) -> None:
    settings.INTEGRATION_EVENTS = {**settings.INTEGRATION_EVENTS, "RETRY_MAX_DELAY": 3600.0}
    body = text_of(admin_client_.get(reverse(SUBSCRIBERS)))
    assert "break-all" not in body
    assert "tests.<wbr>eventapp.<wbr>subscribers.<wbr>probe_a" in body
    assert "3600.0" not in body and ".0 s" not in body
    assert "backoff 0.5 s doubling up to 1 h" in body


def test_links_to_where_the_dashboard_used_to_be_still_arrive(admin_client_: Client) -> None:
    old = reverse(PUB_LIST) + "dashboard/"
    for path, name in (("", OVERVIEW), ("subscribers/", SUBSCRIBERS), ("nodes/", NODES)):
        response = admin_client_.get(old + path)
        assert response.status_code == 302 and response["Location"] == reverse(name)


def test_the_overview_works_with_its_cache_down(admin_client_: Client, settings: Any) -> None:
    publish(ProbeHappened(n=1))
    # Nothing listens on port 1: every cache call fails (the session lives in the database).
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache",
                                   "LOCATION": "redis://127.0.0.1:1/0"}}
    for page in (OVERVIEW, LIVE):
        response = admin_client_.get(reverse(page))
        assert response.status_code == 200, page
    assert json.loads(admin_client_.get(reverse(LIVE)).content)["published"]["pending"] == 1


# --- groups: state, limits, pause and resume ------------------------------------------------


GROUP_ACTION = "admin:integration_events_group_action"


def test_subscribers_page_shows_group_states_and_limits(admin_client_: Client) -> None:
    from integration_events.models import GroupState

    GroupState.objects.create(group="probe-a", paused=True, paused_at=timezone.now())
    GroupState.objects.create(group="probe-b", backoff_until=timezone.now() + timedelta(
        minutes=5), reason="GroupUnavailable: broker refused")
    publish(ProbeHappened(n=1))
    body = text_of(admin_client_.get(reverse(SUBSCRIBERS)))
    groups = body.split('id="ie-group-states"', 1)[1].split("</table>", 1)[0]
    row = {g: re.search(rf'data-group="{g}">(.*?)</tr>', groups, re.S).group(1)
           for g in ("probe-a", "probe-b", "limited", "rated")}
    assert "paused" in row["probe-a"] and "Resume" in row["probe-a"]
    assert "backing off" in row["probe-b"] and "broker refused" in row["probe-b"]
    assert "at most 2 at once" in row["limited"] and "at most 20/s" in row["rated"]


def test_an_operator_pauses_and_resumes_a_group_from_the_subscribers_page(
        admin_client_: Client) -> None:
    from integration_events.models import GroupState

    response = admin_client_.post(reverse(GROUP_ACTION), {"group": "probe-a",
                                                          "action": "pause"})
    assert response.status_code == 302
    assert GroupState.objects.get(group="probe-a").paused
    body = text_of(admin_client_.get(response["Location"]))
    assert "Group probe-a paused" in body
    admin_client_.post(reverse(GROUP_ACTION), {"group": "probe-a", "action": "resume"})
    assert not GroupState.objects.get(group="probe-a").paused
    response = admin_client_.post(reverse(GROUP_ACTION), {"group": "nope", "action": "pause"})
    assert not GroupState.objects.filter(group="nope").exists()
    assert admin_client_.get(reverse(GROUP_ACTION)).status_code == 405


def test_pausing_a_group_needs_change_on_received_messages() -> None:
    from integration_events.models import GroupState

    viewer = make_user("viewer-only", perms=VIEW)
    assert viewer.post(reverse(GROUP_ACTION), {"group": "probe-a", "action": "pause"}
                       ).status_code == 403
    assert 'name="action"' not in text_of(viewer.get(reverse(SUBSCRIBERS)))
    assert not GroupState.objects.filter(group="probe-a", paused=True).exists()
    operator = make_user("operator-x", perms=VIEW + ("change_receivedmessage",))
    assert operator.post(reverse(GROUP_ACTION), {"group": "probe-a", "action": "pause"}
                         ).status_code == 302
    assert GroupState.objects.get(group="probe-a").paused
