"""Heartbeat rows of the processes that run the engine, for the admin's Nodes page."""

from __future__ import annotations

import os
import socket

from django.db.models import F
from django.db.models.functions import Now

from .models import WorkerNode


def node_name() -> str:
    """hostname:pid of the qcluster main process (workers are its children)."""
    return f"{socket.gethostname()}:{os.getppid()}"


def heartbeat(alias: str, processed: int = 0) -> None:
    name = node_name()
    updated = WorkerNode.objects.using(alias).filter(name=name).update(
        last_seen_at=Now(), processed=F("processed") + processed
    )
    if not updated:
        WorkerNode.objects.using(alias).get_or_create(
            name=name,
            defaults={"hostname": socket.gethostname(), "pid": os.getppid(),
                      "processed": processed},
        )
