"""manage.py integration_events_group pause|resume|status [GROUP]"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DEFAULT_DB_ALIAS

from integration_events import operations
from integration_events.groups import WAITING_LIMIT, group_infos
from integration_events.models import ReceivedMessage
from integration_events.registry import all_subscriptions


class Command(BaseCommand):
    help = ("Pause or resume a subscriber group on every cluster (its backlog stays; running "
            "handlers finish), or show the groups' state.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("action", choices=["pause", "resume", "status"])
        parser.add_argument("group", nargs="?", help="the group (pause and resume)")
        parser.add_argument("--database", default=DEFAULT_DB_ALIAS,
                            help="the database alias the engine serves (default: default)")

    def handle(self, *args: Any, action: str, group: str | None, database: str,
               **options: Any) -> None:
        if action == "status":
            self.status(database)
            return
        if not group:
            raise CommandError(f"{action} needs a GROUP; `status` lists them.")
        known = {sub.group for sub in all_subscriptions()}
        if group not in known and not ReceivedMessage.objects.using(database).filter(
                group=group).exists():
            hint = ", ".join(sorted(known)) or "none"
            raise CommandError(f"no group {group!r} here (known groups: {hint}).")
        if action == "pause":
            changed = operations.pause_group(group, using=database)
            self.stdout.write(f"group {group} paused" if changed
                              else f"group {group} was paused already")
        else:
            changed = operations.resume_group(group, using=database)
            self.stdout.write(f"group {group} resumed" if changed
                              else f"group {group} was not paused")

    def status(self, database: str) -> None:
        for info in group_infos(database):
            flags = []
            if info.paused:
                flags.append("paused")
            if info.backoff_until is not None:
                flags.append(f"backing off until {info.backoff_until:%Y-%m-%d %H:%M:%S}")
            if info.max_concurrency:
                flags.append(f"max_concurrency={info.max_concurrency}")
            if info.rate_limit:
                flags.append(f"rate_limit={info.rate_limit}")
            backlog = f"more than {WAITING_LIMIT}" if info.waiting_more else str(info.waiting)
            self.stdout.write(f"{info.group}: {backlog} waiting" + (f" ({', '.join(flags)})"
                                                                     if flags else ""))
