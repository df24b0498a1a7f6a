"""End to end through the sample contexts' real services and handlers (no cluster):
accounts -> equipment -> files, with deliver_pending standing in for qcluster."""

from __future__ import annotations

import importlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.files.storage import default_storage
from django.db.models import Count
from django.test import override_settings

from accounts import services as accounts
from accounts.domain_events import UserSignedUp
from accounts.events import UserDeleted
from accounts.models import EquipmentHolding, Profile
from accounts.topics import AccountsTopics
from equipment import services as equipment
from equipment.domain_events import EquipmentAdded, EquipmentStatusSet
from equipment.events import EquipmentCheckedIn, EquipmentCreated
from equipment.models import CategoryStock, Equipment, EquipmentStatus, KnownUser
from equipment.topics import EquipmentTopics
from files import services as files
from files.domain_events import FileAdded, FileRemoved
from files.models import FileKind, StorageUsage, StoredFile
from files.topics import FilesTopics
from integration_events.domain import (
    DomainEvent,
    capture_domain_events,
    domain_handler,
    forget_domain_handler,
)
from integration_events.models import MessageStatus, PublishedMessage, ReceivedMessage
from integration_events.operations import reexecute_received
from integration_events.testing import capture_events, deliver_pending

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def media_root(settings: Any, tmp_path: Path) -> Path:
    settings.MEDIA_ROOT = str(tmp_path / "media")
    settings.DEMO_FAULT_INJECTION = True
    settings.EQUIPMENT_NOTIFICATION_RECIPIENTS = ["inventory@example.com"]
    return tmp_path / "media"


def register(name: str = "ada") -> int:
    user = accounts.register_user(username=name, email=f"{name}@example.com")
    return int(user.pk)


def test_creating_equipment_sends_exactly_one_email(mailoutbox: list[Any]) -> None:
    with capture_events() as published:
        item = equipment.create_equipment(name="Drill", category="tools")
    assert [type(e) for e in published] == [EquipmentCreated]
    assert mailoutbox == []  # nothing is sent before delivery

    deliver_pending()
    deliver_pending()  # nothing left: no second mail

    assert len(mailoutbox) == 1
    assert mailoutbox[0].subject == "New equipment: Drill"
    assert str(item.pk) in mailoutbox[0].body
    assert mailoutbox[0].to == ["inventory@example.com"]


def test_equipment_created_reaches_both_groups(media_root: Path) -> None:
    item = equipment.create_equipment(name="Ladder", category="access")
    deliver_pending()

    message = PublishedMessage.objects.get(topic=EquipmentTopics.EQUIPMENT_CREATED)
    assert sorted(message.receipts.values_list("group", flat=True)) == ["equipment", "files"]
    assert set(message.receipts.values_list("status", flat=True)) == {MessageStatus.SUCCEEDED}
    manual = StoredFile.objects.get(equipment_id=item.pk)
    assert manual.kind == FileKind.MANUAL
    assert manual.source_message_id == message.pk
    with default_storage.open(manual.content.name) as fh:
        assert b"Ladder" in fh.read()
    assert (media_root / manual.content.name).exists()


def test_failed_email_is_retried_and_sent_once(mailoutbox: list[Any], monkeypatch: Any) -> None:
    from django.core import mail

    real_send = mail.send_mail
    calls: list[int] = []

    def flaky_send(*args: Any, **kwargs: Any) -> int:
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("SMTP server unavailable")
        return real_send(*args, **kwargs)

    monkeypatch.setattr("equipment.subscribers.send_mail", flaky_send)
    equipment.create_equipment(name="Saw", category="tools")
    deliver_pending()
    receipt = ReceivedMessage.objects.get(topic=EquipmentTopics.EQUIPMENT_CREATED,
                                          group="equipment")
    assert receipt.status == MessageStatus.RETRYING
    assert "SMTP server unavailable" in receipt.last_error
    assert mailoutbox == []

    deliver_pending(include_delayed=True)
    receipt.refresh_from_db()
    assert receipt.status == MessageStatus.SUCCEEDED
    assert len(mailoutbox) == 1


def _user_with_things(name: str = "grace") -> tuple[int, Equipment, list[StoredFile]]:
    user_id = register(name)
    item = equipment.create_equipment(name="Camera", category="media")
    equipment.check_out(item.pk, user_id)
    uploads = [
        files.store_file(name=f"{name}-{i}.txt", content=b"hello %d" % i, owner_id=user_id)
        for i in range(2)
    ]
    deliver_pending()
    return user_id, item, uploads


def test_deleting_a_user_removes_files_and_checks_in_equipment_exactly_once(
    media_root: Path,
) -> None:
    user_id, item, uploads = _user_with_things()
    other = files.store_file(name="keep.txt", content=b"not theirs", owner_id=user_id + 1000)
    paths = [media_root / f.content.name for f in uploads]
    assert all(p.exists() for p in paths)
    assert EquipmentHolding.objects.get(equipment_id=item.pk).user_id == user_id

    with capture_events() as published:
        assert accounts.delete_user(user_id) is True
    assert published == [UserDeleted(user_id=user_id, email="grace@example.com",
                                     deleted_at=published[0].deleted_at)]  # type: ignore[attr-defined]
    deliver_pending()

    item.refresh_from_db()
    assert item.status == EquipmentStatus.AVAILABLE
    assert item.checked_out_to is None
    assert not StoredFile.objects.filter(owner_id=user_id).exists()
    assert not any(p.exists() for p in paths)
    assert StoredFile.objects.filter(pk=other.pk).exists()
    assert KnownUser.objects.get(user_id=user_id).is_deleted
    assert EquipmentHolding.objects.get(equipment_id=item.pk).user_id is None
    checked_in = PublishedMessage.objects.filter(topic=EquipmentTopics.EQUIPMENT_CHECKED_IN)
    assert checked_in.count() == 1
    version = item.version

    # Deliver the user-deleted message to every group a second time.
    deleted_receipts = ReceivedMessage.objects.filter(topic=AccountsTopics.USER_DELETED)
    assert sorted(deleted_receipts.values_list("group", flat=True)) == ["equipment", "files"]
    assert reexecute_received(deleted_receipts) == 2
    with capture_events() as again:
        stats = deliver_pending()
    assert stats.succeeded == 2
    assert again == []  # no second check-in, no second purge
    assert checked_in.count() == 1
    item.refresh_from_db()
    assert item.version == version
    assert StoredFile.objects.filter(pk=other.pk).exists()
    assert set(deleted_receipts.values_list("status", flat=True)) == {MessageStatus.SUCCEEDED}


def test_a_failing_purge_rolls_back_and_keeps_the_content(
    media_root: Path, monkeypatch: Any
) -> None:
    user_id, _, uploads = _user_with_things("linus")
    paths = [media_root / f.content.name for f in uploads]

    def broken_publish(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("outbox unavailable")

    monkeypatch.setattr("files.services.publish", broken_publish)
    accounts.delete_user(user_id)
    deliver_pending()

    receipt = ReceivedMessage.objects.get(topic=AccountsTopics.USER_DELETED, group="files")
    assert receipt.status == MessageStatus.RETRYING
    # The rows came back with the rollback, and the content was never touched.
    assert StoredFile.objects.filter(owner_id=user_id).count() == 2
    assert all(p.exists() for p in paths)

    monkeypatch.undo()
    deliver_pending(include_delayed=True)
    receipt.refresh_from_db()
    assert receipt.status == MessageStatus.SUCCEEDED
    assert not StoredFile.objects.filter(owner_id=user_id).exists()
    assert not any(p.exists() for p in paths)


def test_the_chain_carries_one_correlation_id_with_increasing_hops() -> None:
    user_id, item, _ = _user_with_things("barbara")
    accounts.delete_user(user_id)
    deliver_pending()

    root = PublishedMessage.objects.get(topic=AccountsTopics.USER_DELETED)
    chain = list(PublishedMessage.objects.filter(correlation_id=root.correlation_id)
                 .order_by("correlation_sequence"))
    by_topic = {m.topic: m for m in chain}
    assert root.correlation_sequence == 0
    assert root.causation_id is None
    # accounts -> equipment -> files (-> the file-stored notice files publishes)
    checked_in = by_topic[EquipmentTopics.EQUIPMENT_CHECKED_IN]
    assert checked_in.correlation_sequence == 1
    assert checked_in.causation_id == root.pk
    receipt_stored = [m for m in chain if m.topic == "files.file-stored"]
    assert [m.correlation_sequence for m in receipt_stored] == [2]
    assert receipt_stored[0].causation_id == checked_in.pk
    assert by_topic["files.user-files-purged"].correlation_sequence == 1
    assert [m.correlation_sequence for m in chain] == sorted(m.correlation_sequence
                                                              for m in chain)
    assert max(m.correlation_sequence for m in chain) == 2
    # The earlier, unrelated events started chains of their own.
    created = PublishedMessage.objects.get(topic=EquipmentTopics.EQUIPMENT_CREATED)
    assert created.correlation_id != root.correlation_id
    receipt = StoredFile.objects.get(equipment_id=item.pk, kind=FileKind.RECEIPT)
    assert receipt.source_message_id == checked_in.pk


DEMO_FAULTS = {"INSTRUMENTATION": ["project.faults.DemoFaults"]}


@override_settings(INTEGRATION_EVENTS={**settings.INTEGRATION_EVENTS, **DEMO_FAULTS})
def test_demo_faults_flaky_succeeds_on_retry_and_poison_fails(mailoutbox: list[Any]) -> None:
    equipment.create_equipment(name="Drone [flaky]", category="air")
    equipment.create_equipment(name="Kiln [poison]", category="heat")
    deliver_pending()
    flaky = ReceivedMessage.objects.filter(message__content__contains="Drone")
    assert set(flaky.values_list("status", flat=True)) == {MessageStatus.RETRYING}
    for _ in range(5):
        deliver_pending(include_delayed=True)
    assert set(flaky.values_list("status", flat=True)) == {MessageStatus.SUCCEEDED}
    poison = ReceivedMessage.objects.filter(message__content__contains="Kiln")
    assert set(poison.values_list("status", flat=True)) == {MessageStatus.FAILED}
    assert all("DemoPoisonError" in e for e in poison.values_list("last_error", flat=True))
    assert [m.subject for m in mailoutbox] == ["New equipment: Drone [flaky]"]


@override_settings(INTEGRATION_EVENTS={**settings.INTEGRATION_EVENTS, **DEMO_FAULTS},
                   DEMO_FAULT_INJECTION=False)
def test_demo_faults_are_off_unless_enabled(mailoutbox: list[Any]) -> None:
    equipment.create_equipment(name="Kiln [poison]", category="heat")
    deliver_pending()
    assert set(ReceivedMessage.objects.values_list("status", flat=True)) == {
        MessageStatus.SUCCEEDED
    }
    assert len(mailoutbox) == 1


def test_user_deleted_before_registered_is_not_resurrected() -> None:
    from django.utils import timezone

    from accounts.events import UserRegistered
    from equipment.subscribers import hand_back_equipment, remember_user

    now = timezone.now()
    hand_back_equipment(UserDeleted(user_id=77, email="x@example.com", deleted_at=now), None)  # type: ignore[arg-type]
    remember_user(UserRegistered(user_id=77, email="x@example.com", display_name="X",
                                 registered_at=now), None)  # type: ignore[arg-type]
    known = KnownUser.objects.get(user_id=77)
    assert known.is_deleted
    assert known.registered_at == now
    with pytest.raises(equipment.EquipmentError, match="deleted"):
        item = equipment.create_equipment(name="Tent", category="camping")
        equipment.check_out(item.pk, 77)


def test_a_late_check_out_does_not_overwrite_a_newer_check_in() -> None:
    user_id = register("katherine")
    item = equipment.create_equipment(name="Scope", category="optics")
    equipment.check_out(item.pk, user_id)
    equipment.check_in(item.pk)
    # Deliver the check-in first, then the older check-out.
    check_out_msg = PublishedMessage.objects.get(topic=EquipmentTopics.EQUIPMENT_CHECKED_OUT)
    PublishedMessage.objects.filter(pk=check_out_msg.pk).update(
        next_attempt_at=check_out_msg.next_attempt_at.replace(year=2100)
    )
    deliver_pending()
    assert EquipmentHolding.objects.get(equipment_id=item.pk).user_id is None
    deliver_pending(include_delayed=True)
    holding = EquipmentHolding.objects.get(equipment_id=item.pk)
    assert holding.user_id is None
    item.refresh_from_db()
    assert holding.equipment_version == item.version


def test_services_refuse_impossible_changes() -> None:
    item = equipment.create_equipment(name="Van", category="vehicles")
    with pytest.raises(equipment.EquipmentError, match="not checked out"):
        equipment.check_in(item.pk)
    equipment.change_status(item.pk, EquipmentStatus.MAINTENANCE)
    with pytest.raises(equipment.EquipmentError, match="not available"):
        equipment.check_out(item.pk, 1)
    with pytest.raises(equipment.EquipmentError, match="check_out"):
        equipment.change_status(item.pk, EquipmentStatus.CHECKED_OUT)
    equipment.change_status(item.pk, EquipmentStatus.RETIRED)
    with pytest.raises(equipment.EquipmentError, match="retired"):
        equipment.change_status(item.pk, EquipmentStatus.AVAILABLE)
    with pytest.raises(equipment.EquipmentError, match="name and a category"):
        equipment.create_equipment(name=" ", category="x")
    assert accounts.delete_user(123456) is False


def test_a_rolled_back_command_publishes_nothing() -> None:
    from django.db import transaction

    with pytest.raises(RuntimeError), transaction.atomic():
        equipment.create_equipment(name="Ghost", category="none")
        raise RuntimeError("abort")
    assert not Equipment.objects.exists()
    assert not PublishedMessage.objects.exists()


def test_status_changes_publish_versions_in_order() -> None:
    user_id = register("alan")
    item = equipment.create_equipment(name="Laptop", category="it")
    with capture_events() as published:
        equipment.check_out(item.pk, user_id)
        equipment.check_in(item.pk)
    versions = [e.equipment_version for e in published]
    assert versions == sorted(versions)
    assert versions[-1] == 3
    assert isinstance(published[-1], EquipmentCheckedIn)
    assert published[-1].reason == "returned"


# --- domain events inside each context ----------------------------------------------------

class RefusedByTest(Exception):
    """Raised by the failing domain handler the tests below add after the samples' own."""


@pytest.fixture
def failing_handler() -> Iterator[Any]:
    """failing_handler(EventClass): one more handler of that domain event, registered after
    the sample's handlers (so they have already written and published), that raises."""
    added: list[Any] = []

    def add(event_type: type[DomainEvent]) -> None:
        def refuse(event: DomainEvent) -> None:
            raise RefusedByTest(type(event).__name__)

        refuse.__annotations__ = {"event": event_type, "return": None}
        added.append(domain_handler(refuse))

    yield add
    for handler in added:
        forget_domain_handler(handler)


def _stock_from_equipment() -> dict[str, dict[str, int]]:
    counted: dict[str, dict[str, int]] = {}
    rows = Equipment.objects.values("category", "status").annotate(n=Count("pk")).order_by()
    for row in rows:
        counted.setdefault(row["category"], {})[row["status"]] = row["n"]
    return counted


def _stock() -> dict[str, dict[str, int]]:
    return {
        s.category: {status: n for status in EquipmentStatus.values
                     if (n := getattr(s, status))}
        for s in CategoryStock.objects.all()
    }


def test_the_stock_per_category_follows_every_change() -> None:
    user_id = register("barbara")
    with capture_domain_events() as raised:
        drill = equipment.create_equipment(name="Drill", category="tools")
        saw = equipment.create_equipment(name="Saw", category="tools")
        equipment.create_equipment(name="Projector", category="media")
        equipment.check_out(drill.pk, user_id)
        equipment.change_status(saw.pk, EquipmentStatus.MAINTENANCE)
        equipment.change_status(saw.pk, EquipmentStatus.RETIRED)
        equipment.check_in(drill.pk)
        equipment.check_out(drill.pk, user_id)
    assert [type(e) for e in raised] == [EquipmentAdded] * 3 + [EquipmentStatusSet] * 5
    assert _stock() == _stock_from_equipment() == {
        "tools": {"checked_out": 1, "retired": 1}, "media": {"available": 1},
    }
    assert CategoryStock.objects.get(category="tools").in_service == 1
    # Each status change was also published, with the version of the change.
    changed = PublishedMessage.objects.filter(topic=EquipmentTopics.EQUIPMENT_STATUS_CHANGED)
    assert changed.count() == 5


@pytest.mark.django_db(transaction=True)
def test_a_failing_equipment_domain_handler_rolls_back_and_publishes_nothing(
    failing_handler: Any,
) -> None:
    item = equipment.create_equipment(name="Drill", category="tools")
    published_before = PublishedMessage.objects.count()
    failing_handler(EquipmentStatusSet)

    with pytest.raises(RefusedByTest):
        equipment.change_status(item.pk, EquipmentStatus.MAINTENANCE)

    item.refresh_from_db()
    assert (item.status, item.version) == (EquipmentStatus.AVAILABLE, 1)
    assert _stock() == {"tools": {"available": 1}}
    assert PublishedMessage.objects.count() == published_before

    failing_handler(EquipmentAdded)
    with pytest.raises(RefusedByTest):
        equipment.create_equipment(name="Saw", category="tools")
    assert Equipment.objects.count() == 1
    assert _stock() == {"tools": {"available": 1}}
    assert PublishedMessage.objects.count() == published_before


def test_signing_up_creates_the_profile_and_publishes_in_one_transaction() -> None:
    with capture_domain_events() as raised, capture_events() as published:
        user_id = register("edsger")
    assert [type(e) for e in raised] == [UserSignedUp]
    profile = Profile.objects.get(user_id=user_id)
    assert profile.display_name == "edsger"
    assert profile.registered_at == raised[0].registered_at  # type: ignore[attr-defined]
    assert [(type(e).__name__, e.user_id) for e in published] == [  # type: ignore[attr-defined]
        ("UserRegistered", user_id)]


@pytest.mark.django_db(transaction=True)
def test_a_failing_accounts_domain_handler_rolls_back_and_publishes_nothing(
    failing_handler: Any,
) -> None:
    failing_handler(UserSignedUp)
    with pytest.raises(RefusedByTest):
        register("margaret")
    assert not get_user_model().objects.filter(username="margaret").exists()
    assert not Profile.objects.exists()
    assert not PublishedMessage.objects.exists()


def _usage() -> dict[int, tuple[int, int]]:
    return {u.owner_id: (u.file_count, u.total_bytes) for u in StorageUsage.objects.all()}


def test_storage_usage_follows_uploads_deletions_and_purges() -> None:
    user_id = register("frances")
    other_id = register("hedy")
    with capture_domain_events() as raised:
        a = files.store_file(name="a.txt", content=b"12345", owner_id=user_id)
        files.store_file(name="b.txt", content=b"123", owner_id=user_id)
        files.store_file(name="c.txt", content=b"1", owner_id=other_id)
        files.generate_file(source_message_id=uuid.uuid4(), name="manual.txt", text="m",
                            kind=FileKind.MANUAL)
    assert [type(e) for e in raised] == [FileAdded] * 4
    assert _usage() == {user_id: (2, 8), other_id: (1, 1)}  # generated files have no owner
    assert PublishedMessage.objects.filter(topic=FilesTopics.FILE_STORED).count() == 4

    with capture_domain_events() as raised:
        files.delete_files([a])
    assert raised == [FileRemoved(file_id=a.pk, size=5, owner_id=user_id)]
    assert _usage() == {user_id: (1, 3), other_id: (1, 1)}

    accounts.delete_user(user_id)
    deliver_pending()  # files purges the user's files in its handler's transaction
    assert _usage() == {other_id: (1, 1)}


@pytest.mark.django_db(transaction=True)
def test_a_failing_files_domain_handler_rolls_back_and_publishes_nothing(
    failing_handler: Any,
) -> None:
    user_id = register("ada")
    stored = files.store_file(name="keep.txt", content=b"kept", owner_id=user_id)
    published_before = PublishedMessage.objects.count()

    failing_handler(FileAdded)
    with pytest.raises(RefusedByTest):
        files.store_file(name="new.txt", content=b"new", owner_id=user_id)
    failing_handler(FileRemoved)
    with pytest.raises(RefusedByTest):
        files.delete_files([stored])

    assert list(StoredFile.objects.values_list("name", flat=True)) == ["keep.txt"]
    assert _usage() == {user_id: (1, 4)}
    assert PublishedMessage.objects.count() == published_before
    with default_storage.open(stored.content.name) as fh:  # deleted only after a commit
        assert fh.read() == b"kept"


def test_the_migrations_count_what_existed_before_the_domain_handlers() -> None:
    from django.apps import apps as django_apps

    stock_migration = importlib.import_module("equipment.migrations.0002_categorystock")
    usage_migration = importlib.import_module("files.migrations.0002_storageusage")
    user_id = register("kathleen")
    item = equipment.create_equipment(name="Drill", category="tools")
    equipment.create_equipment(name="Saw", category="tools")
    equipment.change_status(item.pk, EquipmentStatus.MAINTENANCE)
    files.store_file(name="a.txt", content=b"abc", owner_id=user_id)
    files.store_file(name="b.txt", content=b"de", owner_id=user_id)
    expected_stock, expected_usage = _stock(), _usage()
    CategoryStock.objects.all().delete()
    StorageUsage.objects.all().delete()

    stock_migration.count_existing_equipment(django_apps, None)
    usage_migration.count_existing_files(django_apps, None)
    assert _stock() == expected_stock == {"tools": {"available": 1, "maintenance": 1}}
    assert _usage() == expected_usage == {user_id: (2, 5)}
