"""The demo's management commands: seed_demo and simulate (project/management/commands)."""

from __future__ import annotations

import re
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.test import Client, override_settings

from accounts.topics import AccountsTopics
from equipment.models import Equipment
from equipment.topics import EquipmentTopics
from integration_events.models import MessageStatus, PublishedMessage, ReceivedMessage
from integration_events.testing import deliver_pending

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def media_root(settings: Any, tmp_path: Path) -> None:
    settings.MEDIA_ROOT = str(tmp_path / "media")
    settings.DEMO_FAULT_INJECTION = True


def seed(*args: str) -> tuple[str, str]:
    out = StringIO()
    call_command("seed_demo", *args, stdout=out)
    text = out.getvalue()
    match = re.search(r"password: (\S+)", text)
    assert match, text
    return match.group(1), text


def test_seed_demo_prints_credentials_that_log_in() -> None:
    password, text = seed()
    assert "username: admin" in text
    assert password != "admin" and len(password) >= 12
    client = Client()
    assert client.login(username="admin", password=password)
    assert client.get("/admin/equipment/equipment/").status_code == 200
    assert client.get("/admin/integration_events/publishedmessage/").status_code == 200


def test_seed_demo_is_idempotent_and_resets_the_password() -> None:
    first, _ = seed()
    users = get_user_model().objects.count()
    items = Equipment.objects.count()
    messages = PublishedMessage.objects.count()
    assert items >= 5 and users >= 5

    second, text = seed()
    assert second != first
    assert "0 new user(s), 0 new piece(s)" in text
    assert get_user_model().objects.count() == users
    assert Equipment.objects.count() == items
    assert PublishedMessage.objects.count() == messages  # nothing published twice
    assert not Client().login(username="admin", password=first)
    assert Client().login(username="admin", password=second)


def test_seed_demo_publishes_through_the_services() -> None:
    seed()
    topics = set(PublishedMessage.objects.values_list("topic", flat=True))
    assert {AccountsTopics.USER_REGISTERED, EquipmentTopics.EQUIPMENT_CREATED,
            EquipmentTopics.EQUIPMENT_CHECKED_OUT} <= topics
    deliver_pending()
    assert set(ReceivedMessage.objects.values_list("status", flat=True)) == {
        MessageStatus.SUCCEEDED
    }


def test_seed_demo_no_data_only_makes_the_admin() -> None:
    password, _ = seed("--no-data")
    assert not Equipment.objects.exists()
    assert Client().login(username="admin", password=password)


@override_settings(INTEGRATION_EVENTS={**settings.INTEGRATION_EVENTS,
                                       "INSTRUMENTATION": ["project.faults.DemoFaults"]})
def test_simulate_runs_and_publishes() -> None:
    out = StringIO()
    call_command("simulate", "--count", "40", "--rate", "0", "--seed", "7", "--poison", "1",
                 "--flaky", "0.3", stdout=out)
    text = out.getvalue()
    assert "[40/40]" in text
    assert "Done: 40 operations" in text
    assert PublishedMessage.objects.count() >= 40
    topics = set(PublishedMessage.objects.values_list("topic", flat=True))
    assert {EquipmentTopics.EQUIPMENT_CREATED, AccountsTopics.USER_REGISTERED} <= topics
    assert Equipment.objects.filter(name__contains="[poison]").count() == 1

    # Delivered: flaky handlers succeed on retry, the poison message ends up failed.
    for _ in range(6):
        deliver_pending(include_delayed=True)
    failed = ReceivedMessage.objects.filter(status=MessageStatus.FAILED)
    assert failed.count() == 2  # the poison item's two groups (mail and files)
    assert all("[poison]" in m.message.content for m in failed)
    assert not ReceivedMessage.objects.exclude(
        status__in=(MessageStatus.SUCCEEDED, MessageStatus.FAILED)
    ).exists()
    flaky_ok = ReceivedMessage.objects.filter(status=MessageStatus.SUCCEEDED, attempts__gt=1)
    assert flaky_ok.exists()


def test_simulate_rejects_bad_options() -> None:
    from django.core.management.base import CommandError

    with pytest.raises(CommandError):
        call_command("simulate", "--count", "0", stdout=StringIO())
    with pytest.raises(CommandError):
        call_command("simulate", "--flaky", "2", stdout=StringIO())


def test_seed_demo_prints_the_admin_address_it_is_given() -> None:
    _, text = seed("--no-data", "--url", "http://127.0.0.1:8001/admin/")
    assert "url:      http://127.0.0.1:8001/admin/" in text
    _, text = seed("--no-data")
    assert "url:      http://127.0.0.1:8000/admin/" in text
