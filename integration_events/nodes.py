"""Heartbeat rows of the processes that run the engine, and the one rule for "alive".

Every qcluster writes its heartbeat every HEARTBEAT_INTERVAL seconds (default 30) from a
daemon thread in each of its worker processes, started by django-q2's ``post_spawn`` signal,
whether it has work or not; tasks also beat when they end. A node is **alive** while its
last heartbeat is at most three intervals old (``alive_within()``, 90 s by default): one
missed beat (a busy database, a recycled worker) does not make a running cluster look dead,
and a stopped one is reported within a minute and a half. The admin's banner, the Nodes
page, the health check and the broker consumers all use this rule.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from datetime import timedelta
from typing import Any

from django.db import connections
from django.db.models import F, QuerySet
from django.db.models.functions import Now

from .conf import get_settings
from .models import WorkerNode

logger = logging.getLogger("integration_events")

# Beats missed before a node counts as gone.
ALIVE_AFTER_BEATS = 3


def node_name() -> str:
    """hostname:pid of the process whose children run the tasks (django-q2's sentinel)."""
    return f"{socket.gethostname()}:{os.getppid()}"


def alive_within() -> timedelta:
    """How recent a heartbeat must be for its node to count as alive."""
    return timedelta(seconds=ALIVE_AFTER_BEATS * get_settings().HEARTBEAT_INTERVAL)


def alive_nodes(using: str = "default") -> QuerySet[WorkerNode]:
    """The nodes whose last heartbeat is recent enough (compared in database time)."""
    return WorkerNode.objects.using(using).filter(last_seen_at__gte=Now() - alive_within())


def any_alive(using: str = "default") -> bool:
    """True if at least one node serving ``using`` has beaten within ``alive_within()``."""
    return alive_nodes(using).exists()


def heartbeat(alias: str, processed: int = 0, name: str | None = None,
              pid: int | None = None) -> None:
    """Mark this node as seen now (one UPDATE; the row is created on the first beat).
    ``pid`` defaults to the cluster's (the parent of a worker process)."""
    name = name or node_name()
    updated = WorkerNode.objects.using(alias).filter(name=name).update(
        last_seen_at=Now(), processed=F("processed") + processed
    )
    if not updated:
        WorkerNode.objects.using(alias).get_or_create(
            name=name,
            defaults={"hostname": socket.gethostname(), "pid": pid or os.getppid(),
                      "processed": processed},
        )


class HeartbeatThread(threading.Thread):
    """Beats for this node on every alias the engine serves, every HEARTBEAT_INTERVAL."""

    def __init__(self, interval: float, aliases: tuple[str, ...]) -> None:
        super().__init__(name="ie-heartbeat", daemon=True)
        self.interval = interval
        self.aliases = aliases
        self.stopped = threading.Event()

    def beat(self) -> None:
        for alias in self.aliases:
            try:
                heartbeat(alias)
            except Exception:
                # A database blip must not end the thread: the next beat tries again.
                logger.warning("heartbeat failed alias=%s", alias, exc_info=True,
                               extra={"alias": alias})
                connections[alias].close()

    def run(self) -> None:
        try:
            self.beat()
            while not self.stopped.wait(self.interval):
                self.beat()
        finally:
            for alias in self.aliases:
                connections[alias].close()


_thread: HeartbeatThread | None = None
_thread_pid: int | None = None


def start_heartbeat(**kwargs: Any) -> HeartbeatThread:
    """Start this process's heartbeat thread (once per process; a forked child starts its
    own). Connected to django-q2's ``post_spawn`` signal, sent in each new worker process."""
    global _thread, _thread_pid
    if _thread is not None and _thread_pid == os.getpid() and _thread.is_alive():
        return _thread
    settings = get_settings()
    _thread = HeartbeatThread(settings.HEARTBEAT_INTERVAL, settings.DATABASES)
    _thread_pid = os.getpid()
    _thread.start()
    return _thread


def stop_heartbeat(timeout: float = 5.0) -> None:
    """Stop this process's heartbeat thread, if it runs (for code that embeds the engine, and
    tests that send ``post_spawn`` in their own process)."""
    global _thread, _thread_pid
    thread, _thread, _thread_pid = _thread, None, None
    if thread is not None and thread.is_alive():
        thread.stopped.set()
        thread.join(timeout)
