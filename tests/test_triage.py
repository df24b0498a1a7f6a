"""integration_events.triage (failure groups, requeue and delete a group) and its admin page
(integration_events.triage_admin): grouping, bounds, batches and permissions."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.db.models.functions import Now
from django.test import Client, override_settings
from django.urls import reverse

from integration_events import publish
from integration_events.models import MessageStatus, ReceivedMessage
from integration_events.testing import deliver_pending
from integration_events.triage import delete_group, failure_groups, members, requeue_group
from integration_events.triage_admin import URL_NAME
from tests.eventapp.events import ProbeHappened

TRIAGE = f"admin:{URL_NAME}"  # the page, wired into the admin's dashboard URLs

pytestmark = pytest.mark.django_db

PROBE_A = "tests.eventapp.subscribers.probe_a"
PROBE_B = "tests.eventapp.subscribers.probe_b"


@pytest.fixture
def dead_letters() -> None:
    """RuntimeError x3 in probe_a, x1 in probe_b; PermanentFailure x2 in probe_a."""
    with override_settings(INTEGRATION_EVENTS={"MAX_ATTEMPTS": 1, "NUDGE": False}):
        for n in range(3):
            publish(ProbeHappened(n=n, behaviour="fail", only_group="probe-a"))
        publish(ProbeHappened(n=3, behaviour="fail", only_group="probe-b"))
        for n in range(4, 6):
            publish(ProbeHappened(n=n, behaviour="permanent", only_group="probe-a"))
        deliver_pending()


def test_groups_by_error_type_and_handler_largest_first(dead_letters) -> None:
    groups = failure_groups()
    assert [(g.error_type, g.handler, g.count) for g in groups] == [
        ("RuntimeError", PROBE_A, 3), ("PermanentFailure", PROBE_A, 2),
        ("RuntimeError", PROBE_B, 1)]
    first = groups[0]
    rows = ReceivedMessage.objects.filter(group="probe-a", error_type="RuntimeError")
    assert first.first_seen == min(r.finished_at for r in rows)
    assert first.last_seen == max(r.finished_at for r in rows)
    assert first.sample is not None and first.sample.group == "probe-a"
    assert first.sample_error.startswith("RuntimeError: probe ")
    assert "\n" not in first.sample_error


def test_requeue_a_group_runs_its_members_again_and_nothing_else(dead_letters) -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("integration_events.operations.nudge", lambda using: None)
        assert requeue_group("RuntimeError", PROBE_A) == 3
    requeued = ReceivedMessage.objects.filter(group="probe-a", status=MessageStatus.PENDING)
    assert requeued.count() == 3
    assert set(requeued.values_list("attempts", "error_type")) == {(0, "")}
    assert [(g.error_type, g.handler, g.count) for g in failure_groups()] == [
        ("PermanentFailure", PROBE_A, 2), ("RuntimeError", PROBE_B, 1)]


def test_actions_take_the_members_up_to_what_the_operator_saw(dead_letters) -> None:
    rows = list(members("RuntimeError", PROBE_A).order_by("pk"))
    # The newest member failed after the page was shown.
    ReceivedMessage.objects.filter(pk=rows[-1].pk).update(
        finished_at=Now() + timedelta(seconds=60))
    seen = max(r.finished_at for r in rows[:-1])
    assert delete_group("RuntimeError", PROBE_A, through=seen) == 2
    assert list(members("RuntimeError", PROBE_A)) == [rows[-1]]


def test_large_groups_go_in_batches(dead_letters) -> None:
    with override_settings(INTEGRATION_EVENTS={"MAX_ATTEMPTS": 1, "NUDGE": False}):
        for n in range(10, 15):
            publish(ProbeHappened(n=n, behaviour="fail", only_group="probe-b"))
        deliver_pending()
    assert members("RuntimeError", PROBE_B).count() == 6
    assert delete_group("RuntimeError", PROBE_B, batch_size=2) == 6
    assert not members("RuntimeError", PROBE_B).exists()
    assert ReceivedMessage.objects.filter(status=MessageStatus.FAILED).count() == 5


# --- the page ---------------------------------------------------------------------------------


def staff(*perms: str) -> Client:
    user = User.objects.create_user(f"ops-{'-'.join(perms) or 'none'}", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(
        content_type__app_label="integration_events",
        codename__in=[f"{p}_receivedmessage" for p in perms]))
    client = Client()
    client.force_login(user)
    return client


def post(client: Client, action: str, error_type: str, handler: str, **extra: str) -> Any:
    return client.post(reverse(TRIAGE), {"action": action, "error_type": error_type,
                                           "handler": handler, **extra})


def test_the_page_lists_the_groups_for_staff_with_view(dead_letters) -> None:
    response = staff("view").get(reverse(TRIAGE))
    assert response.status_code == 200
    html = response.content.decode()
    assert html.count('class="ie-failure-group"') == 3
    assert "PermanentFailure" in html and PROBE_B in html
    assert "Requeue this group" not in html and "Delete this group" not in html
    assert staff().get(reverse(TRIAGE)).status_code == 403
    anonymous = Client().get(reverse(TRIAGE))
    assert anonymous.status_code == 302 and "/admin/login/" in anonymous["Location"]


def test_requeue_needs_change_and_delete_needs_delete_and_a_confirmation(dead_letters
                                                                          ) -> None:
    viewer = staff("view")
    assert post(viewer, "requeue", "RuntimeError", PROBE_A).status_code == 403
    changer = staff("view", "change")
    assert "Requeue this group" in changer.get(reverse(TRIAGE)).content.decode()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("integration_events.operations.nudge", lambda using: None)
        response = post(changer, "requeue", "RuntimeError", PROBE_A)
    assert response.status_code == 302
    assert not members("RuntimeError", PROBE_A).exists()
    assert post(changer, "delete", "PermanentFailure", PROBE_A).status_code == 403
    deleter = staff("view", "delete")
    confirm = post(deleter, "delete", "PermanentFailure", PROBE_A)
    assert confirm.status_code == 200 and "Delete the <strong>2</strong>" in \
        confirm.content.decode()
    assert members("PermanentFailure", PROBE_A).count() == 2, "not before the confirmation"
    done = post(deleter, "delete", "PermanentFailure", PROBE_A, confirm="yes")
    assert done.status_code == 302
    assert not members("PermanentFailure", PROBE_A).exists()
    assert "Deleted 2 dead letter(s)" in deleter.get(reverse(TRIAGE)).content.decode()


def test_error_text_is_escaped_and_a_broken_form_does_nothing(dead_letters) -> None:
    ReceivedMessage.objects.filter(status=MessageStatus.FAILED).update(
        last_error="RuntimeError: <script>alert(1)</script>")
    client = staff("view", "change", "delete")
    html = client.get(reverse(TRIAGE)).content.decode()
    assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)" in html
    response = post(client, "requeue", "RuntimeError", PROBE_A, through="not a date")
    assert response.status_code == 302
    assert members("RuntimeError", PROBE_A).count() == 3


def test_the_forms_carry_a_csrf_token(dead_letters) -> None:
    user = User.objects.create_superuser("root", is_staff=True)
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    assert post(client, "requeue", "RuntimeError", PROBE_A).status_code == 403
    html = client.get(reverse(TRIAGE)).content.decode()
    token = html.split('name="csrfmiddlewaretoken" value="')[1].split('"')[0]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("integration_events.operations.nudge", lambda using: None)
        response = post(client, "requeue", "RuntimeError", PROBE_A,
                        csrfmiddlewaretoken=token)
    assert response.status_code == 302
    assert not members("RuntimeError", PROBE_A).exists()


def test_each_groups_count_links_to_its_members_in_the_received_list(dead_letters) -> None:
    import re
    from html import unescape

    client = staff("view")
    html = client.get(reverse(TRIAGE)).content.decode()
    links = [unescape(u) for u in re.findall(r'href="([^"]*receivedmessage/\?[^"]*)"', html)]
    assert len(links) == 3, links
    counts = []
    for link in links:
        response = client.get(link)
        assert response.status_code == 200, link
        counts.append(response.content.decode().count('<td class="field-group"'))
    assert sorted(counts) == [1, 2, 3]


def test_a_project_that_narrows_the_received_admin_narrows_triage(dead_letters,
                                                                  monkeypatch) -> None:
    from django.contrib import admin

    model_admin = admin.site._registry[ReceivedMessage]
    monkeypatch.setattr(model_admin, "has_delete_permission", lambda request, obj=None: False)
    client = staff("view", "change", "delete")
    html = client.get(reverse(TRIAGE)).content.decode()
    assert "Requeue this group" in html and "Delete this group" not in html
    response = post(client, "delete", "RuntimeError", PROBE_A, confirm="yes")
    assert response.status_code == 403
    assert members("RuntimeError", PROBE_A).count() == 3
