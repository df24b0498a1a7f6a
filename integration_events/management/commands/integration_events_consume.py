"""manage.py integration_events_consume [BRIDGE ...]: receive from broker bridges.

A long-running process, supervised like ``manage.py qcluster``: it stores what each
bridge's queue delivers in the outbox (the cluster fans it out to the @subscriber groups)
and acknowledges it after the commit. SIGTERM or Ctrl+C: finish the batch in hand,
acknowledge what committed, exit. See docs/bridges.md.
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from integration_events.bridges.config import BridgeConfig
from integration_events.bridging.consuming import BridgeConsumer
from integration_events.conf import get_settings


class Command(BaseCommand):
    help = ("Receive messages from broker bridges (INTEGRATION_EVENTS['BRIDGES']) into the "
            "outbox, until SIGTERM or Ctrl+C. Run it next to qcluster, under the same "
            "supervisor.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "bridges", nargs="*", metavar="BRIDGE",
            help="bridges to consume (default: every bridge with RECEIVE patterns)")
        parser.add_argument(
            "--database", default="default",
            help="the database alias received messages are stored in (default: default)")

    def handle(self, *args: Any, bridges: list[str], database: str, **options: Any) -> None:
        chosen = self.choose(bridges)
        if database not in get_settings().DATABASES:
            raise CommandError(
                f"--database {database!r} is not one of INTEGRATION_EVENTS['DATABASES'] "
                f"({', '.join(get_settings().DATABASES)}): the cluster would never deliver "
                "what is stored there.")
        stop = threading.Event()
        self.handle_signals(stop)
        consumers = [BridgeConsumer(config, using=database, stop=stop, report=self.report)
                     for config in chosen]
        if len(consumers) == 1:
            consumers[0].run()
            return
        self.run_threads(consumers, stop)

    def choose(self, names: list[str]) -> list[BridgeConfig]:
        """The bridges to consume; CommandError names what is configured."""
        configured = get_settings().BRIDGES
        receiving = [c for c in configured.values() if c.receive]
        listed = ", ".join(c.name for c in receiving) or "none"
        if not names:
            if not receiving:
                raise CommandError(
                    "No bridge has RECEIVE patterns, so there is nothing to consume. Set "
                    "INTEGRATION_EVENTS['BRIDGES'][name]['RECEIVE'] and 'QUEUE' "
                    "(docs/bridges.md).")
            return receiving
        chosen = []
        for name in dict.fromkeys(names):
            config = configured.get(name)
            if config is None:
                raise CommandError(
                    f"Bridge {name!r} is not configured in INTEGRATION_EVENTS['BRIDGES']. "
                    f"Bridges with RECEIVE patterns: {listed}.")
            if not config.receive:
                raise CommandError(
                    f"Bridge {name!r} has no RECEIVE patterns: it only sends (qcluster does "
                    f"that). Bridges with RECEIVE patterns: {listed}.")
            chosen.append(config)
        return chosen

    def handle_signals(self, stop: threading.Event) -> None:
        def request_stop(signum: int, frame: FrameType | None) -> None:
            if stop.is_set() and signum == signal.SIGINT:
                raise KeyboardInterrupt  # a second Ctrl+C: stop now
            self.report(f"{signal.Signals(signum).name}: finishing the batch in hand, then "
                        "stopping", False)
            stop.set()

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)

    def run_threads(self, consumers: list[BridgeConsumer], stop: threading.Event) -> None:
        """One thread per bridge; the main thread keeps handling signals. A consumer that
        dies of an unexpected error stops the others, so the supervisor restarts us."""
        failures: list[str] = []

        def run(consumer: BridgeConsumer) -> None:
            try:
                consumer.run()
            except Exception as exc:
                failures.append(f"bridge {consumer.config.name}: {type(exc).__name__}: {exc}")
                stop.set()
                raise

        threads = [threading.Thread(target=run, args=(c,), name=f"consume-{c.config.name}")
                   for c in consumers]
        for thread in threads:
            thread.start()
        while any(t.is_alive() for t in threads):
            for thread in threads:
                thread.join(timeout=0.5)
        if failures:
            raise CommandError("; ".join(failures))

    def report(self, line: str, warning: bool) -> None:
        stream = self.stderr if warning else self.stdout
        stream.write(line)
        stream.flush()
        if warning:
            sys.stderr.flush()
