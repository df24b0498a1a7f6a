"""manage.py simulate: drive a realistic load through the sample services.

Registers users, creates equipment, checks it out and in, sends some to maintenance and
deletes users, all through the services, so every step publishes the events a real user
would. A share of what it creates is marked ``[flaky]`` (the first delivery to each handler
fails, the retry succeeds) and a few items ``[poison]`` (every delivery fails, so the message
ends up failed), see ``project/faults.py``. Run ``manage.py qcluster`` beside it and watch the
admin's message lists fill, retry and fail.
"""

from __future__ import annotations

import random
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db.models import Count

from accounts import services as accounts
from equipment import services as equipment
from equipment.models import Equipment, EquipmentStatus
from files import services as files
from integration_events.models import MessageStatus, PublishedMessage, ReceivedMessage

CATEGORIES = {
    "tools": ["Drill", "Impact driver", "Angle grinder", "Laser level", "Jigsaw"],
    "it": ["Laptop", "Monitor", "Docking station", "Label printer", "Tablet"],
    "audio-visual": ["Projector", "Speaker", "Microphone", "Camera", "Tripod"],
    "access": ["Ladder", "Harness", "Scaffold tower", "Step stool"],
}
FIRST_NAMES = ["ada", "alan", "barbara", "claude", "dennis", "edsger", "frances", "grace",
               "hedy", "john", "katherine", "ken", "linus", "margaret", "niklaus", "radia"]

# Relative weights of the operations (an impossible one is skipped and another drawn).
WEIGHTS = {
    "create_equipment": 30,
    "register_user": 14,
    "check_out": 25,
    "check_in": 15,
    "maintenance": 6,
    "upload_file": 5,
    "delete_user": 5,
}


class Command(BaseCommand):
    help = ("Drive a realistic load through the sample services (creations, check-outs, "
            "deletions), with a share of handler failures that succeed on retry and a few "
            "poison messages. Start `manage.py qcluster` to have it delivered.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--count", type=int, default=200,
                            help="Number of operations (default 200).")
        parser.add_argument("--rate", type=float, default=10.0,
                            help="Operations per second; 0 runs flat out (default 10).")
        parser.add_argument("--flaky", type=float, default=0.1,
                            help="Share of new equipment and users marked [flaky]: their "
                            "handlers fail once, then succeed on retry (default 0.1).")
        parser.add_argument("--poison", type=int, default=2,
                            help="Number of poison items among the new equipment: every "
                            "delivery fails until the message is failed (default 2).")
        parser.add_argument("--seed", type=int, default=None, help="Random seed (repeatable).")
        parser.add_argument("--deliver", action="store_true",
                            help="Also deliver the events in this process as it goes, then "
                            "wait for the retries (no qcluster needed).")
        parser.add_argument("--max-wait", type=float, default=120.0,
                            help="With --deliver: how long to wait for retries to settle "
                            "(seconds, default 120).")

    def handle(self, *args: Any, **options: Any) -> None:
        count: int = options["count"]
        rate: float = options["rate"]
        flaky: float = options["flaky"]
        if count < 1:
            raise CommandError("--count must be at least 1")
        if rate < 0 or not 0 <= flaky <= 1 or options["poison"] < 0:
            raise CommandError("--rate must be >= 0, --flaky between 0 and 1, --poison >= 0")
        self.rng = random.Random(options["seed"])
        self.flaky = flaky
        # Spread the poison items over the run instead of bunching them at the start.
        self.poison_at = set(self.rng.sample(range(count), min(options["poison"], count)))
        self.serial = int(time.time()) % 100000
        worker = None
        if options["deliver"]:
            from integration_events.worker import Worker

            worker = Worker(keep_leases=False)

        done: Counter[str] = Counter()
        refused = 0
        interval = 1.0 / rate if rate else 0.0
        started = time.monotonic()
        tty = sys.stdout.isatty() and options.get("verbosity", 1) >= 1
        every = max(1, count // 20)
        for i in range(count):
            name = self._operation(i)
            try:
                getattr(self, f"op_{name}")(i)
                done[name] += 1
            except (equipment.EquipmentError, accounts.AccountsError):
                refused += 1  # a race with another actor (or the cluster): fine in a demo
            if worker is not None:
                worker.run_once()
            if tty or (i + 1) % every == 0 or i + 1 == count:
                self._progress(i + 1, count, done, started, tty)
            if interval:
                # Pace against the start time so that slow operations do not drift the rate.
                delay = started + (i + 1) * interval - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
        if tty:
            self.stdout.write("")
        if worker is not None:
            self._settle(worker, options["max_wait"])
        self.stdout.write(self.style.SUCCESS(
            f"Done: {sum(done.values())} operations in {time.monotonic() - started:.1f}s ("
            + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in sorted(done.items()))
            + (f"; {refused} refused" if refused else "") + ")."
        ))
        self.stdout.write(self._status_line())
        self.stdout.write("Watch them in the admin: /admin/integration_events/")

    # --- choosing what to do ------------------------------------------------------------------

    def _operation(self, i: int) -> str:
        if i in self.poison_at:
            return "create_equipment"
        names = list(WEIGHTS)
        while True:
            name = self.rng.choices(names, weights=[WEIGHTS[n] for n in names])[0]
            if self._possible(name):
                return name

    def _possible(self, name: str) -> bool:
        if name in ("create_equipment", "register_user"):
            return True
        if name in ("check_out", "maintenance"):
            return Equipment.objects.filter(status=EquipmentStatus.AVAILABLE).exists() and (
                name == "maintenance" or self._users().exists()
            )
        if name == "check_in":
            return Equipment.objects.filter(status=EquipmentStatus.CHECKED_OUT).exists()
        if name in ("upload_file", "delete_user"):
            # Keep a few users around so that check-outs have someone to go to.
            return self._users().count() > (3 if name == "delete_user" else 0)
        return False

    def _users(self) -> Any:
        return get_user_model().objects.filter(is_staff=False)

    def _random(self, queryset: Any) -> Any:
        return queryset.order_by("?").first()

    def _marker(self) -> str:
        return " [flaky]" if self.rng.random() < self.flaky else ""

    # --- the operations -----------------------------------------------------------------------

    def op_create_equipment(self, i: int) -> None:
        category = self.rng.choice(list(CATEGORIES))
        name = f"{self.rng.choice(CATEGORIES[category])} #{self.serial + i}"
        name += " [poison]" if i in self.poison_at else self._marker()
        equipment.create_equipment(name=name, category=category)

    def op_register_user(self, i: int) -> None:
        first = self.rng.choice(FIRST_NAMES)
        username = f"{first}{self.serial + i}"
        tag = "+flaky" if self._marker() else ""
        accounts.register_user(username=username, email=f"{username}{tag}@example.com",
                               display_name=f"{first.capitalize()} {self.serial + i}")

    def op_check_out(self, i: int) -> None:
        item = self._random(Equipment.objects.filter(status=EquipmentStatus.AVAILABLE))
        user = self._random(self._users())
        equipment.check_out(item.pk, user.pk)

    def op_check_in(self, i: int) -> None:
        item = self._random(Equipment.objects.filter(status=EquipmentStatus.CHECKED_OUT))
        equipment.check_in(item.pk)

    def op_maintenance(self, i: int) -> None:
        item = self._random(Equipment.objects.filter(status=EquipmentStatus.AVAILABLE))
        equipment.change_status(item.pk, EquipmentStatus.MAINTENANCE)

    def op_upload_file(self, i: int) -> None:
        user = self._random(self._users())
        files.store_file(name=f"notes-{self.serial + i}.txt", owner_id=user.pk,
                         content=f"Notes of {user.get_username()} ({i})\n".encode())

    def op_delete_user(self, i: int) -> None:
        user = self._random(self._users())
        accounts.delete_user(user.pk)

    def _settle(self, worker: Any, max_wait: float) -> None:
        """Deliver until nothing is pending or retrying (or ``max_wait`` runs out)."""
        deadline = time.monotonic() + max_wait
        while True:
            worker.run_until_idle()
            due_in = worker.next_due_in()
            if due_in is None:
                return
            if time.monotonic() + max(due_in, 0) > deadline:
                self.stdout.write(f"Stopped waiting after {max_wait:g}s; qcluster will deliver "
                                  "the rest.")
                return
            self.stdout.write(f"waiting {max(due_in, 0):.1f}s for retries  "
                              f"{self._status_line()}")
            time.sleep(max(due_in, 0) + 0.05)

    # --- progress -----------------------------------------------------------------------------

    def _status_line(self) -> str:
        def counts(model: Any) -> dict[str, int]:
            rows = model.objects.values("status").annotate(n=Count("pk"))
            return {row["status"]: row["n"] for row in rows}

        published, received = counts(PublishedMessage), counts(ReceivedMessage)
        order: list[str] = list(MessageStatus.values)
        fmt: Callable[[dict[str, int]], str] = lambda c: " ".join(  # noqa: E731
            f"{s}={c.get(s, 0)}" for s in order
        )
        return f"outbox: {fmt(published)} | inbox: {fmt(received)}"

    def _progress(self, i: int, count: int, done: Counter[str], started: float,
                  tty: bool) -> None:
        elapsed = time.monotonic() - started
        line = (f"[{i:>{len(str(count))}}/{count}] {i / elapsed if elapsed else 0:5.1f} op/s  "
                f"equipment+{done['create_equipment']} users+{done['register_user']} "
                f"out {done['check_out']} in {done['check_in']} "
                f"deleted {done['delete_user']}  {self._status_line()}")
        if tty:
            self.stdout.write("\r" + line[:200].ljust(120), ending="")
            self.stdout.flush()
        else:
            self.stdout.write(line)
