"""manage.py seed_demo: demo data and an admin account with a fresh random password.

Safe to run again: existing demo users and equipment are kept, and the admin's password is
reset (and printed) each time, so a lost password is one command away.
"""

from __future__ import annotations

import secrets
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError, transaction

from accounts import services as accounts
from equipment import services as equipment
from equipment.models import Equipment, EquipmentStatus

DEMO_USERS = [
    ("ada", "Ada Lovelace"),
    ("grace", "Grace Hopper"),
    ("alan", "Alan Turing"),
    ("katherine", "Katherine Johnson"),
    ("linus", "Linus Torvalds"),
]
DEMO_EQUIPMENT = [
    ("Cordless drill", "tools"),
    ("Laser level", "tools"),
    ("Projector", "audio-visual"),
    ("Conference speaker", "audio-visual"),
    ("Laptop 14in", "it"),
    ("Laptop 16in", "it"),
    ("Label printer", "it"),
    ("Ladder 3m", "access"),
    ("Safety harness", "access"),
    ("Camera kit", "media"),
]


class Command(BaseCommand):
    help = ("Create demo users and equipment through the services (so events are published) "
            "and an admin superuser with a new random password, printed at the end.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--username", default="admin", help="Admin username (admin).")
        parser.add_argument("--email", default="admin@example.com")
        parser.add_argument("--url", default="http://127.0.0.1:8000/admin/",
                            help="The admin's address to print (scripts/demo.sh passes its "
                            "port's).")
        parser.add_argument("--no-data", action="store_true",
                            help="Only create or reset the admin account.")
        parser.add_argument("--deliver", action="store_true",
                            help="Deliver the published events now, in this process, instead "
                            "of leaving them to qcluster.")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            created_users, created_items = (0, 0) if options["no_data"] else self._seed()
            password = self._admin(options["username"], options["email"])
        except DatabaseError as exc:
            raise CommandError(f"{exc}\nHas the database been migrated? Run "
                               "`manage.py migrate` first.") from exc
        if not options["no_data"]:
            self.stdout.write(f"Demo data: {created_users} new user(s), {created_items} new "
                              "piece(s) of equipment (existing ones kept).")
        if options["deliver"]:
            from integration_events.worker import Worker

            stats = Worker(keep_leases=False).run_until_idle()
            self.stdout.write(f"Delivered: {stats.succeeded} handler run(s) succeeded, "
                              f"{stats.retried} to retry, {stats.failed} failed.")
        self.stdout.write(self.style.SUCCESS("Admin account ready:"))
        self.stdout.write(f"  url:      {options['url']}")
        self.stdout.write(f"  username: {options['username']}")
        self.stdout.write(f"  password: {password}")

    def _seed(self) -> tuple[int, int]:
        new_users = 0
        user_ids: list[int] = []
        for username, display_name in DEMO_USERS:
            user = get_user_model().objects.filter(username=username).first()
            if user is None:
                user = accounts.register_user(
                    username=username, email=f"{username}@example.com",
                    display_name=display_name,
                )
                new_users += 1
            user_ids.append(int(user.pk))
        new_items: list[Equipment] = []
        for name, category in DEMO_EQUIPMENT:
            if not Equipment.objects.filter(name=name).exists():
                new_items.append(equipment.create_equipment(name=name, category=category))
        # Something checked out and something in maintenance, so every status shows up.
        for item, user_id in zip(new_items[:3], user_ids, strict=False):
            equipment.check_out(item.pk, user_id)
        if len(new_items) > 3:
            equipment.change_status(new_items[3].pk, EquipmentStatus.MAINTENANCE)
        return new_users, len(new_items)

    def _admin(self, username: str, email: str) -> str:
        """Create the superuser (through the accounts service, so UserRegistered is
        published) or reset its password. Returns the new password."""
        password = secrets.token_urlsafe(12)
        with transaction.atomic():
            user: User | None = get_user_model().objects.filter(username=username).first()
            if user is None:
                user = accounts.register_user(username=username, email=email,
                                              display_name="Demo admin")
            user.set_password(password)
            user.is_staff = user.is_superuser = user.is_active = True
            user.save()
        return password
