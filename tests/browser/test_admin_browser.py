"""The admin dashboard in a real browser: Playwright (sync API) driving Debian's Chromium
against pytest-django's live server, in a 1400 px wide window.

The operator test runs a real ``manage.py qcluster`` subprocess (tests/conftest.py's
``cluster`` fixture) that delivers the requeued message; the traffic before it is delivered
in-process with ``integration_events.testing.deliver_pending()`` so that the pages have
something to show without waiting for retries.

Tests never write into the checkout: screenshots of the pages they visit are taken only when
IE_SCREENSHOT_DIR names a directory (the documentation's screenshots come from the demo's
data instead: scripts/screenshots.py).

Skipped, with the reason, when playwright or /usr/bin/chromium is missing.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

CHROMIUM = os.environ.get("IE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
WIDTH = 1400
TIMEOUT_MS = 15_000

sync_api = pytest.importorskip(
    "playwright.sync_api",
    reason="playwright is not installed (pip install -e '.[browser]')",
)
if shutil.which(CHROMIUM) is None:  # missing, or not an executable file
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set IE_CHROMIUM)",
                allow_module_level=True)


def screenshot_dir() -> Path | None:
    """Where to put screenshots: only where IE_SCREENSHOT_DIR asks (off by default)."""
    named = os.environ.get("IE_SCREENSHOT_DIR", "").strip()
    return Path(named) if named else None


def shot(page: Any, name: str) -> None:
    target = screenshot_dir()
    if target is not None:
        target.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(target / f"{name}.png"), full_page=True)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    # Playwright's sync API runs an event loop in this thread; the ORM calls the test makes
    # between browser steps are plain synchronous ones.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                     headless=True)
        yield chromium
        chromium.close()
    os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)


@pytest.fixture
def users(db: Any) -> None:
    from django.contrib.auth.models import Permission, User

    User.objects.create_superuser("admin", "admin@example.com", "pw")
    viewer = User.objects.create_user("viewer", password="pw", is_staff=True)
    viewer.user_permissions.add(*Permission.objects.filter(
        content_type__app_label="integration_events", codename__startswith="view_"))


def new_page(browser: Any, live_server: Any, username: str, *, dark: bool = False) -> Any:
    context = browser.new_context(viewport={"width": WIDTH, "height": 900},
                                  base_url=live_server.url,
                                  color_scheme="dark" if dark else "light")
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    page.goto("/admin/login/?next=/admin/")
    page.fill("#id_username", username)
    page.fill("#id_password", "pw")
    page.click("input[type=submit]")
    page.wait_for_url("**/admin/")
    return page


def traffic() -> tuple[Any, Any]:
    """Some delivered messages, a failed one (its probe-a handler raises every time), a
    permanently failed one and a delayed one; a heartbeat row and a claim for the Nodes page."""
    from django.utils import timezone

    from integration_events import publish
    from integration_events.models import MessageStatus, PublishedMessage, WorkerNode
    from integration_events.testing import deliver_pending
    from tests.eventapp.events import ProbeHappened

    for n in range(12):
        publish(ProbeHappened(n=n, text=f"order {n}"))
    failed = publish(ProbeHappened(n=100, behaviour="fail", only_group="probe-a",
                                   text="<script>alert('x')</script>"))
    permanent = publish(ProbeHappened(n=101, behaviour="permanent", only_group="probe-b"))
    deliver_pending(include_delayed=True)
    publish(ProbeHappened(n=102), delay=3600)
    node = WorkerNode.objects.create(name="worker-1:4242", hostname="worker-1", pid=4242)
    busy = publish(ProbeHappened(n=103))
    PublishedMessage.objects.filter(pk=busy.pk).update(
        status=MessageStatus.PROCESSING, claimed_by=node.name, lease_token=uuid.uuid4(),
        lease_until=timezone.now() + timedelta(seconds=30))
    return failed, permanent


def publish_ok(n: int, text: str = "") -> Any:
    from integration_events import publish
    from integration_events.testing import deliver_pending
    from tests.eventapp.events import ProbeHappened

    message = publish(ProbeHappened(n=n, text=text))
    deliver_pending()
    return message


def assert_list_fits_the_window(page: Any) -> None:
    """The last column ends inside the window and the list does not scroll sideways."""
    last = page.locator("#result_list thead th").last.bounding_box()
    assert last is not None and last["x"] + last["width"] <= WIDTH, last
    assert page.locator(".results").evaluate("e => e.scrollWidth <= e.clientWidth")


def luminance(css_colour: str) -> float:
    """Relative luminance (0 black .. 1 white) of an "rgb(r, g, b)" computed colour."""
    r, g, b = (int(float(v)) / 255 for v in css_colour[css_colour.index("(") + 1:-1]
               .split(",")[:3])
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def test_operator_finds_a_failed_message_requeues_it_and_sees_it_succeed(
    browser: Any, live_server: Any, users: None, cluster: Any
) -> None:
    from integration_events.models import MessageStatus, PublishedMessage, ReceivedMessage
    from tests.conftest import wait_for

    traffic()
    # A dead letter from an outage that is over: its handler works again now.
    failed = publish_ok(n=200, text="<script>alert('x')</script>")
    receipt = ReceivedMessage.objects.get(message=failed, group="probe-a")
    ReceivedMessage.objects.filter(pk=receipt.pk).update(
        status=MessageStatus.FAILED, attempts=3,
        last_error="ConnectionError: upstream unavailable\n\nTraceback (most recent call "
                   "last):\n  ...\nConnectionError: upstream unavailable")
    running = cluster()
    page = new_page(browser, live_server, "admin")

    # The app index links the dashboard.
    page.goto("/admin/integration_events/")
    page.click("text=Overview")
    page.wait_for_selector("#ie-overview")
    assert page.locator("svg.ie-chart").count() == 2
    assert page.locator("#ie-published-total").inner_text() == "17"
    assert page.locator('[data-ie-received="probe-a|failed"]').inner_text() == "2"
    assert page.locator("svg.ie-chart polyline.ie-series-published").count() == 2
    # The live part refreshes itself from the JSON endpoint, the 24-hour section and the
    # banner included: the cluster's heartbeat hides it.
    page.wait_for_function(
        "document.getElementById('ie-updated').textContent.indexOf('updated') >= 0")
    assert page.locator("#ie-rate-chart svg.ie-chart").count() == 1
    assert page.locator("#ie-history-chart svg.ie-chart").count() == 1
    page.wait_for_selector("#ie-no-cluster", state="hidden")
    shot(page, "overview")

    page.click(".ie-nav >> text=Subscribers")
    page.wait_for_selector("#ie-subscribers")
    assert page.locator("tr.ie-orphaned").count() >= 1
    shot(page, "subscribers")

    page.click(".ie-nav >> text=Nodes")
    page.wait_for_selector("#ie-nodes")
    assert "worker-1:4242" in page.locator("#ie-nodes").inner_text()
    assert "1 published" in page.locator("#ie-nodes").inner_text()
    shot(page, "nodes")

    page.click(".ie-nav >> text=Received")
    page.wait_for_selector("#result_list")
    assert_list_fits_the_window(page)
    page.click("#changelist-filter >> text=Failed")
    page.wait_for_selector("#result_list")
    assert page.locator("#result_list tbody tr").count() == 3
    assert_list_fits_the_window(page)
    shot(page, "received-list")
    stuck = ReceivedMessage.objects.get(message__content__contains='"n":100', group="probe-a")
    page.goto(f"/admin/integration_events/receivedmessage/{stuck.pk}/change/")
    assert "Traceback (most recent call last)" in page.locator(".ie-traceback").inner_text()
    shot(page, "received-detail")

    # Find the failed message by its id, requeue it.
    page.click(".ie-nav >> text=Published")
    page.wait_for_selector("#result_list")
    assert_list_fits_the_window(page)
    shot(page, "published-list")
    page.fill("#searchbar", str(failed.pk))
    page.press("#searchbar", "Enter")
    page.wait_for_selector("#result_list")
    rows = page.locator("#result_list tbody tr")
    assert rows.count() == 1
    assert str(failed.pk) in rows.first.inner_text()
    rows.first.locator("input[name=_selected_action]").check()
    page.select_option("select[name=action]", "requeue")
    page.click("button[name=index]")
    page.wait_for_selector("ul.messagelist")
    assert "1 message(s) requeued" in page.locator("ul.messagelist").inner_text()

    # The cluster runs the requeued message; the detail page shows it.
    def both_succeeded() -> bool:
        return ReceivedMessage.objects.filter(
            message=failed, status=MessageStatus.SUCCEEDED).count() == 2

    wait_for(both_succeeded, 60, "the cluster to run the requeued message", running.log)
    assert PublishedMessage.objects.get(pk=failed.pk).status == MessageStatus.SUCCEEDED
    page.goto(f"/admin/integration_events/publishedmessage/{failed.pk}/change/")
    receipts = page.locator("table.ie-receipts")
    assert receipts.locator(".ie-badge.ie-succeeded").count() == 2
    assert receipts.locator(".ie-badge.ie-failed").count() == 0
    # The payload's HTML is shown as text, not run.
    assert "<script>alert('x')</script>" in page.locator("pre.ie-json").inner_text()
    assert page.locator("pre.ie-json script").count() == 0
    shot(page, "published-detail")
    # The requeue is in the message's history.
    page.click("text=History")
    assert "Requeued (was succeeded)" in page.locator("#change-history").inner_text()
    receipt.refresh_from_db()
    assert receipt.status == MessageStatus.SUCCEEDED
    page.context.close()


def test_view_only_user_sees_but_cannot_act(
    browser: Any, live_server: Any, users: None
) -> None:
    from integration_events.models import MessageStatus, PublishedMessage, ReceivedMessage

    failed, _ = traffic()
    page = new_page(browser, live_server, "viewer")
    page.goto("/admin/integration_events/dashboard/")
    assert page.locator("svg.ie-chart").count() == 2
    page.goto("/admin/integration_events/publishedmessage/")
    page.wait_for_selector("#result_list")
    # No action menu and no checkboxes: nothing to act with.
    assert page.locator("select[name=action]").count() == 0
    assert page.locator("input[name=_selected_action]").count() == 0
    page.goto(f"/admin/integration_events/publishedmessage/{failed.pk}/change/")
    assert page.locator("a.deletelink").count() == 0
    assert page.locator("input[name=_save]").count() == 0
    shot(page, "view-only")

    # Forging the requests the buttons would make is refused too.
    csrf = next(c["value"] for c in page.context.cookies() if c["name"] == "csrftoken")
    headers = {"Referer": live_server.url + "/admin/", "X-CSRFToken": csrf}
    response = page.request.post(
        "/admin/integration_events/publishedmessage/",
        form={"csrfmiddlewaretoken": csrf, "action": "requeue",
              "_selected_action": str(failed.pk), "index": "0"},
        headers=headers,
    )
    assert response.ok  # the changelist again, with nothing done
    deleted = page.request.post(
        f"/admin/integration_events/publishedmessage/{failed.pk}/delete/",
        form={"csrfmiddlewaretoken": csrf, "post": "yes"}, headers=headers,
    )
    assert deleted.status == 403
    receipt = ReceivedMessage.objects.get(message=failed, group="probe-a")
    assert receipt.status == MessageStatus.FAILED
    assert PublishedMessage.objects.filter(pk=failed.pk).exists()

    # The JSON endpoint is the viewer's, and nobody else's.
    assert page.request.get("/admin/integration_events/dashboard/live.json"
                            ).json()["published"]["failed"] == 0
    anonymous = browser.new_context(base_url=live_server.url)
    answer = anonymous.request.get(
        "/admin/integration_events/dashboard/live.json", max_redirects=0)
    assert answer.status == 302
    assert "/admin/login/" in answer.headers["location"]
    anonymous.close()
    page.context.close()


def test_overview_banner_when_no_cluster_is_alive(browser: Any, live_server: Any,
                                                  users: None) -> None:
    from django.core.cache import cache

    from integration_events.models import WorkerNode

    page = new_page(browser, live_server, "viewer")
    page.goto("/admin/integration_events/")
    page.click("text=Overview")
    banner = page.locator("#ie-no-cluster")
    assert banner.is_visible()
    assert "manage.py qcluster" in banner.inner_text()
    WorkerNode.objects.create(name="worker-1:1", hostname="worker-1", pid=1)
    cache.clear()  # what the overview shows is cached for its poll interval
    page.reload()
    assert page.locator("#ie-no-cluster").is_hidden()
    page.context.close()


def test_overview_in_dark_mode(browser: Any, live_server: Any, users: None) -> None:
    traffic()
    page = new_page(browser, live_server, "admin", dark=True)
    page.goto("/admin/integration_events/dashboard/")
    chart = page.locator("#ie-history-chart svg.ie-chart")
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert luminance(background) < 0.2
    plot = chart.locator(".ie-plot").evaluate("e => getComputedStyle(e).fill")
    legend = chart.locator(".ie-legend text").first.evaluate("e => getComputedStyle(e).fill")
    ticks = chart.locator(".ie-tick").first.evaluate("e => getComputedStyle(e).fill")
    assert luminance(plot) < 0.25, plot
    assert luminance(legend) > 0.7, legend
    assert luminance(ticks) > 0.6, ticks
    page.context.close()


def test_screenshots_are_taken_only_when_asked(monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    monkeypatch.delenv("IE_SCREENSHOT_DIR", raising=False)
    assert screenshot_dir() is None
    monkeypatch.setenv("IE_SCREENSHOT_DIR", str(tmp_path))
    assert screenshot_dir() == tmp_path
