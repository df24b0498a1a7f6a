"""The consume loop of ``manage.py integration_events_consume``: one per bridge.

Fetch a batch (up to ``BATCH_MESSAGES`` deliveries, waiting at most ``BATCH_WAIT`` for it
to fill), store it in one transaction (:mod:`receiving`), then acknowledge it with one
``basic_ack(multiple=True)``. A stop request (SIGTERM) is honoured between batches: the
batch in hand is stored and acknowledged first. The broker or the database going away is
reported, waited out (1, 2, 4 ... up to 30 s) and reconnected; what was not acknowledged
is delivered again and de-duplicated. The loop writes the same heartbeat as a cluster
(node ``consume:<bridge>@<host>:<pid>``), so the admin's Nodes page shows it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from django.db import DatabaseError, InterfaceError, connections

from ..bridges.config import BridgeConfig
from ..bridges.errors import BrokerUnavailable, TopologyConflict
from ..conf import get_settings
from ..nodes import heartbeat
from .receiving import DatabaseUnavailable, Stored, database_answers, store_batch

if TYPE_CHECKING:
    from ..bridges.amqp_consumer import AmqpConsumer

logger = logging.getLogger("integration_events")

# A batch: at most this many deliveries, or what came within BATCH_WAIT seconds.
BATCH_MESSAGES = 100
BATCH_WAIT = 0.05
# How long an idle fetch waits before the loop looks at its heartbeat (the fetch itself
# looks at the stop flag more often: amqp_consumer.STOP_CHECK).
IDLE_WAIT = 1.0
# Waits after a failure: doubling from the first to the longest.
FIRST_WAIT, LONGEST_WAIT = 1.0, 30.0
# A progress line at least this often (seconds), and after this many messages.
REPORT_EVERY, REPORT_MESSAGES = 60.0, 10_000

# report(line, is_warning): the command's output.
Report = Callable[[str, bool], None]


def node_name(bridge: str) -> str:
    """The consumer's name on the admin's Nodes page."""
    return f"consume:{bridge}@{socket.gethostname()}:{os.getpid()}"


@dataclass
class Totals:
    """What a consumer did since it started (and since its last progress line)."""

    batches: int = 0
    stored: int = 0
    duplicates: int = 0
    rejected: int = 0
    dead_lettered: int = 0
    dropped: int = 0
    since_report: int = 0
    reported_at: float = field(default_factory=time.monotonic)

    def add(self, result: Stored, messages: int) -> None:
        self.batches += 1
        self.stored += result.stored
        self.duplicates += result.duplicates
        self.rejected += result.rejected
        self.dead_lettered += len(result.dead_letter)
        self.dropped += result.dropped
        self.since_report += messages


class BridgeConsumer:
    """Receives one bridge's queue into the outbox until ``stop`` is set."""

    def __init__(self, config: BridgeConfig, *, using: str = "default",
                 stop: threading.Event | None = None, report: Report | None = None,
                 batch_messages: int = BATCH_MESSAGES, batch_wait: float = BATCH_WAIT) -> None:
        self.config = config
        self.using = using
        self.stop = stop or threading.Event()
        self.report: Report = report or (lambda line, warning: None)
        self.batch_messages = min(batch_messages, config.prefetch)
        self.batch_wait = batch_wait
        self.node = node_name(config.name)
        self.totals = Totals()
        self._consumer: AmqpConsumer | None = None
        self._wait = FIRST_WAIT
        self._beat_at = 0.0
        self._beat_pending = 0
        self._connected_once = False

    def run(self) -> Totals:
        """Consume until ``stop`` is set; returns the totals."""
        logger.info("bridge consumer started bridge=%s queue=%s node=%s", self.config.name,
                    self.config.queue, self.node)
        try:
            while not self.stop.is_set():
                self.step()
        finally:
            self.disconnect()
            self.beat(force=True)
            connections[self.using].close()
            t = self.totals
            logger.info("bridge consumer stopped bridge=%s stored=%s duplicates=%s rejected=%s",
                        self.config.name, t.stored, t.duplicates, t.rejected)
            self.say(f"stopped: {t.stored} stored, {t.duplicates} duplicates, "
                     f"{t.rejected} rejected in {t.batches} batches")
        return self.totals

    def step(self) -> None:
        """One turn of the loop: connect if needed, fetch, store, acknowledge."""
        self.beat()  # also while the broker is away: the process is alive
        consumer = self.connected()
        if consumer is None:
            return
        try:
            batch = consumer.fetch(max_messages=self.batch_messages, max_wait=self.batch_wait,
                                   idle_timeout=IDLE_WAIT, stop=self.stop)
        except BrokerUnavailable as exc:
            self.broker_lost(exc)
            return
        if batch:
            try:
                result = store_batch(batch, self.config, self.using)
            except DatabaseUnavailable as exc:
                self.database_down(exc)
                return
            try:
                for tag in result.dead_letter:
                    consumer.reject(tag)
                # A tag nacked already must not be acknowledged (the broker would close the
                # channel): acknowledge through the last one that was not.
                rejected = set(result.dead_letter)
                kept = [d.delivery_tag for d in batch if d.delivery_tag not in rejected]
                if kept:
                    consumer.ack_through(max(kept))
            except BrokerUnavailable as exc:
                # Stored but not acknowledged: delivered again, and de-duplicated then.
                self.broker_lost(exc)
                return
            self.totals.add(result, len(batch))
            self._beat_pending += result.stored
            self._wait = FIRST_WAIT
        self.progress()

    # --- connections ------------------------------------------------------------------

    def connected(self) -> AmqpConsumer | None:
        if self._consumer is not None and self._consumer.is_open:
            return self._consumer
        from ..bridges.amqp_consumer import AmqpConsumer

        consumer = AmqpConsumer(self.config)
        try:
            consumer.connect()
        except TopologyConflict as exc:
            self.fail_wait(f"the broker refused the queue or exchange: {exc}")
            return None
        except BrokerUnavailable as exc:
            self.fail_wait(f"cannot reach the broker: {exc}")
            return None
        if not self._connected_once:
            # Only now: the queue and its bindings exist, messages sent from here on arrive.
            self._connected_once = True
            self.say(f"consuming queue {self.config.queue!r} on {self.config.safe_url} "
                     f"(exchange {self.config.exchange!r}, prefetch {self.config.prefetch}) "
                     f"as {self.node}")
        else:
            self.resumed("connected to the broker again")
        self._consumer = consumer
        return consumer

    def disconnect(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            consumer.close()

    def broker_lost(self, exc: BaseException) -> None:
        self.disconnect()
        self.fail_wait(f"lost the broker: {exc}. Unacknowledged messages are delivered "
                       "again (and stored once)")

    def database_down(self, exc: BaseException) -> None:
        """Nothing of the batch was acknowledged: give it back to the broker (closing the
        channel requeues it) and wait until the database answers again."""
        self.disconnect()
        self.fail_wait(f"{exc}. Nothing of the batch was acknowledged; check the database "
                       f"({self.using!r}) is up")
        while not self.stop.is_set() and not database_answers(self.using):
            self.fail_wait("the database still does not answer")
        if not self.stop.is_set():
            self.resumed("the database answers again")

    def fail_wait(self, message: str) -> None:
        """Report ``message`` and wait (doubling), unless a stop is requested."""
        logger.warning("bridge consumer waiting bridge=%s wait=%.1f reason=%r",
                       self.config.name, self._wait, message[:500])
        self.say(f"{message}; retrying in {self._wait:g} s", warning=True)
        self.stop.wait(self._wait)
        self._wait = min(LONGEST_WAIT, self._wait * 2)

    # --- heartbeat and progress -------------------------------------------------------

    def beat(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._beat_at < get_settings().HEARTBEAT_INTERVAL:
            return
        try:
            heartbeat(self.using, processed=self._beat_pending, name=self.node,
                      pid=os.getpid())
        except (DatabaseError, InterfaceError):
            logger.warning("heartbeat failed alias=%s node=%s", self.using, self.node,
                           exc_info=True)
            connections[self.using].close()
            self._beat_at = now  # the next try after an interval, not at every turn
            return
        self._beat_at, self._beat_pending = now, 0

    def progress(self) -> None:
        t = self.totals
        elapsed = time.monotonic() - t.reported_at
        if t.since_report < REPORT_MESSAGES and elapsed < REPORT_EVERY:
            return
        rate = t.since_report / elapsed if elapsed > 0 else 0.0
        logger.info("bridge consumer progress bridge=%s messages=%s seconds=%.0f stored=%s "
                    "duplicates=%s rejected=%s", self.config.name, t.since_report, elapsed,
                    t.stored, t.duplicates, t.rejected)
        self.say(f"{t.since_report} messages in the last {elapsed:.0f} s ({rate:.1f}/s); "
                 f"total {t.stored} stored, {t.duplicates} duplicates, {t.rejected} rejected"
                 + (f", {t.dead_lettered} dead-lettered" if t.dead_lettered else "")
                 + (f", {t.dropped} dropped" if t.dropped else ""))
        t.since_report, t.reported_at = 0, time.monotonic()

    def resumed(self, line: str) -> None:
        logger.info("bridge consumer resumed bridge=%s what=%r", self.config.name, line)
        self.say(line)

    def say(self, line: str, *, warning: bool = False) -> None:
        """A line for the person watching the command (stdout, stderr for warnings)."""
        self.report(f"bridge {self.config.name}: {line}", warning)
