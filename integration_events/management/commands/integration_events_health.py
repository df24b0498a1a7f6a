"""manage.py integration_events_health: exit 0 when healthy, 1 with a one-line reason when no
cluster is alive, the lag is too high or dead letters pile up (cron, Kubernetes probes)."""

from __future__ import annotations

import json
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from integration_events.health import DEFAULT_MAX_DEAD_LETTERS, DEFAULT_MAX_LAG, check


class Command(BaseCommand):
    help = ("Check that a cluster is alive, keeping up, and not piling up dead letters; exit 1 "
            "with the reason if not.")
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--max-lag", type=float, default=DEFAULT_MAX_LAG, metavar="SECONDS",
                            help="the oldest due message may have waited this long "
                                 f"(default {DEFAULT_MAX_LAG:g})")
        parser.add_argument("--max-dead-letters", type=int, default=DEFAULT_MAX_DEAD_LETTERS,
                            metavar="N", help="at most this many failed messages "
                                              f"(default {DEFAULT_MAX_DEAD_LETTERS})")
        parser.add_argument("--database", action="append", dest="databases", metavar="ALIAS",
                            help="check only this alias (repeatable; default: every alias "
                                 "in INTEGRATION_EVENTS['DATABASES'])")
        parser.add_argument("--json", action="store_true", help="print the figures as JSON")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["max_lag"] < 0 or options["max_dead_letters"] < 0:
            self.stderr.write("--max-lag and --max-dead-letters must not be negative")
            sys.exit(2)
        databases = tuple(options["databases"]) if options["databases"] else None
        health = check(max_lag=options["max_lag"],
                       max_dead_letters=options["max_dead_letters"], databases=databases)
        if options["json"]:
            self.stdout.write(json.dumps(health.as_dict()))
        elif health.ok:
            self.stdout.write(health.reason)
        if not health.ok:
            self.stderr.write(f"unhealthy: {health.reason}")
            sys.exit(1)
