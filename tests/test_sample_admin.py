"""The sample contexts' admin (equipment/admin.py, accounts/admin.py, files/admin.py): every
change made by clicking goes through the services and publishes its events."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from accounts import services as accounts
from accounts.topics import AccountsTopics
from equipment import services as equipment
from equipment.models import Equipment, EquipmentStatus
from equipment.topics import EquipmentTopics
from files import services as files
from files.models import StoredFile
from files.topics import FilesTopics
from integration_events.models import PublishedMessage

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def media_root(settings: Any, tmp_path: Path) -> None:
    settings.MEDIA_ROOT = str(tmp_path / "media")


def topics() -> list[str]:
    return list(PublishedMessage.objects.order_by("created_at", "id")
                .values_list("topic", flat=True))


def test_add_form_creates_equipment_through_the_service(admin_client: Client) -> None:
    response = admin_client.post("/admin/equipment/equipment/add/",
                                 {"name": "Router", "category": "it"})
    assert response.status_code == 302, response.content[:2000]
    item = Equipment.objects.get()
    assert item.name == "Router" and item.version == 1
    assert topics() == [EquipmentTopics.EQUIPMENT_CREATED]


def test_actions_check_out_and_in(admin_client: Client) -> None:
    user = accounts.register_user(username="ada", email="ada@example.com")
    item = equipment.create_equipment(name="Drill", category="tools")
    url = "/admin/equipment/equipment/"

    response = admin_client.post(url, {"action": "check_out", "_selected_action": [item.pk],
                                       "user_id": ""}, follow=True)
    assert "Enter the user id" in response.content.decode()
    item.refresh_from_db()
    assert item.status == EquipmentStatus.AVAILABLE

    admin_client.post(url, {"action": "check_out", "_selected_action": [item.pk],
                            "user_id": user.pk})
    item.refresh_from_db()
    assert item.status == EquipmentStatus.CHECKED_OUT and item.checked_out_to == user.pk

    admin_client.post(url, {"action": "check_in", "_selected_action": [item.pk]})
    item.refresh_from_db()
    assert item.status == EquipmentStatus.AVAILABLE
    assert topics().count(EquipmentTopics.EQUIPMENT_CHECKED_OUT) == 1
    assert topics().count(EquipmentTopics.EQUIPMENT_CHECKED_IN) == 1


def test_a_refused_action_is_reported_not_raised(admin_client: Client) -> None:
    item = equipment.create_equipment(name="Drill", category="tools")
    response = admin_client.post("/admin/equipment/equipment/",
                                 {"action": "check_in", "_selected_action": [item.pk]},
                                 follow=True)
    assert response.status_code == 200
    assert "is not checked out" in response.content.decode()


def test_equipment_cannot_be_edited_or_deleted_by_hand(admin_client: Client) -> None:
    item = equipment.create_equipment(name="Drill", category="tools")
    admin_client.post(f"/admin/equipment/equipment/{item.pk}/change/",
                      {"name": "Hacked", "category": "x", "status": "retired"})
    item.refresh_from_db()
    assert item.name == "Drill" and item.status == EquipmentStatus.AVAILABLE
    response = admin_client.get(f"/admin/equipment/equipment/{item.pk}/delete/")
    assert response.status_code == 403


def test_deleting_a_user_in_the_admin_publishes_user_deleted(admin_client: Client) -> None:
    user = accounts.register_user(username="grace", email="grace@example.com")
    response = admin_client.post(f"/admin/auth/user/{user.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert not get_user_model().objects.filter(pk=user.pk).exists()
    assert topics() == [AccountsTopics.USER_REGISTERED, AccountsTopics.USER_DELETED]


def test_profile_action_deletes_users(admin_client: Client) -> None:
    user = accounts.register_user(username="alan", email="alan@example.com")
    admin_client.post("/admin/accounts/profile/", {"action": "delete_users",
                                                   "_selected_action": [user.profile.pk]})
    assert not get_user_model().objects.filter(pk=user.pk).exists()
    assert topics()[-1] == AccountsTopics.USER_DELETED


def test_adding_a_user_in_the_admin_publishes_user_registered(admin_client: Client) -> None:
    response = admin_client.post("/admin/auth/user/add/", {
        "username": "linus", "password1": "a-long-password-1", "password2":
        "a-long-password-1", "usable_password": "true",
    })
    assert response.status_code == 302, response.content[:3000]
    user = get_user_model().objects.get(username="linus")
    assert user.profile.display_name == "linus"
    assert topics() == [AccountsTopics.USER_REGISTERED]


def test_uploading_a_file_in_the_admin(admin_client: Client) -> None:
    upload = SimpleUploadedFile("notes.txt", b"hello")
    response = admin_client.post("/admin/files/storedfile/add/", {
        "name": "notes.txt", "content": upload, "owner_id": "5", "equipment_id": "",
    })
    assert response.status_code == 302, response.content[:3000]
    stored = StoredFile.objects.get()
    assert stored.owner_id == 5 and stored.size == 5
    assert topics() == [FilesTopics.FILE_STORED]
    admin_client.post(f"/admin/files/storedfile/{stored.pk}/delete/", {"post": "yes"})
    assert not StoredFile.objects.exists()


def test_staff_without_permission_cannot_run_actions(client: Client) -> None:
    staff = get_user_model().objects.create_user("staff", password="pw", is_staff=True)
    client.force_login(staff)
    item = equipment.create_equipment(name="Drill", category="tools")
    response = client.post("/admin/equipment/equipment/",
                           {"action": "retire", "_selected_action": [item.pk]})
    assert response.status_code == 403
    item.refresh_from_db()
    assert item.status == EquipmentStatus.AVAILABLE


@pytest.mark.parametrize("url", [
    "/admin/equipment/equipment/", "/admin/equipment/equipment/add/",
    "/admin/equipment/knownuser/", "/admin/accounts/profile/",
    "/admin/accounts/equipmentholding/", "/admin/files/storedfile/",
    "/admin/files/storedfile/add/", "/admin/auth/user/",
    "/admin/equipment/categorystock/", "/admin/files/storageusage/",
])
def test_pages_render(admin_client: Client, url: str) -> None:
    user = accounts.register_user(username="ada", email="ada@example.com")
    item = equipment.create_equipment(name="Drill", category="tools")
    equipment.check_out(item.pk, user.pk)
    files.store_file(name="notes.txt", content=b"notes", owner_id=user.pk)
    assert admin_client.get(url).status_code == 200
    assert admin_client.get(f"/admin/equipment/equipment/{item.pk}/change/").status_code == 200


def test_the_counts_kept_by_domain_handlers_are_read_only(admin_client: Client) -> None:
    user = accounts.register_user(username="ada", email="ada@example.com")
    equipment.create_equipment(name="Drill", category="tools")
    files.store_file(name="notes.txt", content=b"notes", owner_id=user.pk)
    stock = admin_client.get("/admin/equipment/categorystock/")
    usage = admin_client.get("/admin/files/storageusage/")
    assert b"tools" in stock.content
    assert f"{user.pk}".encode() in usage.content
    assert b"/admin/equipment/categorystock/add/" not in stock.content
    assert b"/admin/files/storageusage/add/" not in usage.content
    assert b"Select category stock to view" in stock.content  # view, not change
    assert admin_client.get("/admin/equipment/categorystock/add/").status_code == 403
    assert admin_client.get("/admin/files/storageusage/add/").status_code == 403
