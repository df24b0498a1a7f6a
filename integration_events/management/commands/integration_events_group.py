"""manage.py integration_events_group pause|resume|status [GROUP]"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DEFAULT_DB_ALIAS
from django.utils import timezone

from integration_events import operations
from integration_events.models import GroupState, MessageStatus, ReceivedMessage
from integration_events.registry import all_subscriptions, group_limits


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
        states = {s.group: s for s in GroupState.objects.using(database)}
        limits = group_limits()
        groups = sorted({sub.group for sub in all_subscriptions()} | set(states))
        waiting = ReceivedMessage.objects.using(database).filter(
            status__in=(MessageStatus.PENDING, MessageStatus.RETRYING))
        for group in groups:
            state = states.get(group)
            flags = []
            if state is not None and state.paused:
                flags.append("paused")
            if state is not None and state.backoff_until and state.backoff_until > timezone.now():
                flags.append(f"backing off until {state.backoff_until:%Y-%m-%d %H:%M:%S}")
            limit = limits.get(group)
            if limit is not None and limit.max_concurrency:
                flags.append(f"max_concurrency={limit.max_concurrency}")
            if limit is not None and limit.rate_limit:
                flags.append(f"rate_limit={limit.rate_limit}")
            count = waiting.filter(group=group).order_by()[:10001].count()
            backlog = "more than 10000" if count > 10000 else str(count)
            self.stdout.write(f"{group}: {backlog} waiting" + (f" ({', '.join(flags)})"
                                                                if flags else ""))
