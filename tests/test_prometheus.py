"""integration_events.prometheus and the metrics view: the exposition parses with
prometheus-client's own parser and matches the database; access needs the bearer token or a
staff session; scrapes within a few seconds share one read."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.db.models import Count
from django.db.models.functions import Now
from django.test import Client, override_settings
from prometheus_client.parser import text_string_to_metric_families

from integration_events import prometheus
from integration_events.counters import advance_counters
from integration_events.models import MessageStatus, PublishedMessage, ReceivedMessage
from integration_events.nodes import heartbeat
from integration_events.operations import skip_received
from integration_events.testing import deliver_pending, make_due
from tests.eventapp.events import LonelyHappened, ProbeHappened

pytestmark = [pytest.mark.django_db(transaction=True)]

URL = "/integration-events/metrics"
TOKEN = "s3cret-token-for-the-scraper"
SETTINGS = {"MAX_ATTEMPTS": 2, "NUDGE": False, "METRICS_TOKEN": TOKEN}


@pytest.fixture(autouse=True)
def _settings() -> Iterator[None]:
    prometheus.clear_cache()
    with override_settings(INTEGRATION_EVENTS=SETTINGS):
        yield
    prometheus.clear_cache()


def scrape(client: Client | None = None, **headers: str) -> dict[tuple[str, tuple], float]:
    response = (client or Client()).get(URL, headers=headers)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain; version=")
    samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def workload() -> None:
    from integration_events import publish, publish_many

    advance_counters(lag=0)  # the first sweep: the counters start here
    publish_many([ProbeHappened(n=n) for n in range(3)])
    publish(ProbeHappened(n=7, behaviour="fail", only_group="probe-a"))
    publish(ProbeHappened(n=8, behaviour="fail", only_group="probe-b"))
    deliver_pending()
    make_due()
    deliver_pending()  # n=7 and n=8 are dead letters now in their group
    publish(ProbeHappened(n=9, behaviour="fail:5", only_group="probe-b"))
    deliver_pending()  # probe-b retrying, probe-a done
    publish(ProbeHappened(n=11, behaviour="fail:5", only_group="probe-a"))
    deliver_pending()  # probe-a retrying: an operator skips it
    skip_received(ReceivedMessage.objects.filter(status=MessageStatus.RETRYING, group="probe-a"))
    publish(ProbeHappened(n=10), delay=3600)  # pending, not due
    publish(LonelyHappened(n=1))  # pending in the outbox, due
    PublishedMessage.objects.filter(topic=LonelyHappened.topic).update(
        next_attempt_at=Now() - timedelta(seconds=42))
    ReceivedMessage.objects.filter(status=MessageStatus.RETRYING).update(
        next_attempt_at=Now() - timedelta(seconds=7))
    heartbeat("default", name="node-1")
    advance_counters(lag=0)


def test_the_exposition_matches_the_database() -> None:
    workload()
    staff = User.objects.create_user("ops", is_staff=True)
    client = Client()
    client.force_login(staff)
    samples = scrape(client)
    db = {"database": "default"}

    def get(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted({**db, **labels}.items())))]

    inbox = {(g, s): n for g, s, n in ReceivedMessage.objects.values_list(
        "group", "status").annotate(n=Count("id"))}
    for group in ("probe-a", "probe-b"):
        for status in ("pending", "retrying", "processing", "failed"):
            assert get("integration_events_inbox_messages", group=group, status=status) \
                == inbox.get((group, status), 0), (group, status)
        assert get("integration_events_delivered_total", group=group) \
            == inbox[(group, "succeeded")]
        assert get("integration_events_dead_lettered_total", group=group) \
            == inbox[(group, "failed")] == 1
        assert get("integration_events_skipped_total", group=group) \
            == inbox.get((group, "skipped"), 0) == (1 if group == "probe-a" else 0)
    assert get("integration_events_inbox_messages", group="probe-b", status="retrying") == 1
    assert 7 <= get("integration_events_inbox_oldest_due_age_seconds", group="probe-b") < 60
    assert get("integration_events_inbox_oldest_due_age_seconds", group="probe-a") == 0
    outbox = dict(PublishedMessage.objects.values_list("status").annotate(n=Count("id")))
    assert get("integration_events_outbox_messages", status="pending") == outbox["pending"] == 2
    assert 42 <= get("integration_events_outbox_oldest_due_age_seconds") < 100
    assert get("integration_events_nodes_alive") == 1
    assert get("integration_events_counted_through_timestamp_seconds") > 0


def test_anonymous_access_is_refused_and_the_token_or_a_staff_session_let_in() -> None:
    assert Client().get(URL).status_code == 401
    assert Client().get(URL).headers["WWW-Authenticate"].startswith("Bearer")
    assert Client().get(URL, headers={"Authorization": "Bearer wrong-token"}).status_code == 403
    assert Client().get(URL, headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401
    assert scrape(Authorization=f"Bearer {TOKEN}")
    user = User.objects.create_user("visitor")  # logged in, not staff
    client = Client()
    client.force_login(user)
    assert client.get(URL).status_code == 403
    with override_settings(INTEGRATION_EVENTS={"METRICS_TOKEN": None}):
        # No token configured: a bearer header lets nobody in.
        assert Client().get(URL, headers={"Authorization": f"Bearer {TOKEN}"}).status_code \
            == 403
    assert Client().post(URL, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 405


def test_scrapes_within_the_cache_window_share_one_read(django_assert_num_queries) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    first = scrape(**auth)
    from integration_events import publish

    publish(ProbeHappened(n=1), delay=3600)
    with django_assert_num_queries(0):
        assert scrape(**auth) == first
    prometheus.clear_cache()
    assert scrape(**auth) != first


def test_a_scrape_reads_a_fixed_number_of_queries(django_assert_num_queries) -> None:
    """Two grouped reads, the counters, the mark, the nodes: whatever the history holds."""
    workload()
    prometheus.clear_cache()
    with django_assert_num_queries(5):
        prometheus.exposition()


def test_without_prometheus_client_the_error_says_what_to_install() -> None:
    script = (
        "import sys; sys.modules['prometheus_client'] = None\n"
        "import django, os\n"
        "os.environ['DJANGO_SETTINGS_MODULE'] = 'tests.settings'\n"
        "django.setup()\n"
        "try:\n"
        "    import integration_events.prometheus\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    assert out.startswith("ImproperlyConfigured ")
    assert "django-integration-events[prometheus]" in out


def test_docs_list_every_metric_of_the_exposition() -> None:
    import re

    from django.conf import settings

    workload()
    text = (settings.BASE_DIR / "docs" / "observability.md").read_text()
    documented = set(re.findall(r"^\| `(integration_events_\w+)` \| (?:gauge|counter) \|",
                                text, re.M))
    families = {f.name + ("_total" if f.type == "counter" else "")
                for f in text_string_to_metric_families(prometheus.exposition().decode())}
    assert families == documented
