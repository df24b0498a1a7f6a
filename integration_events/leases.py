"""The lease keeper: a thread that renews the claims a worker holds while it works."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from django.db import connections

from .models import GroupSlot, PublishedMessage, ReceivedMessage, after

logger = logging.getLogger("integration_events")


class LeaseKeeper:
    """Renews the leases of the tokens it holds every LEASE_SECONDS/3, so a long handler is
    never started a second time; when the worker dies the renewals stop and the sweep
    releases its rows once the lease has passed."""

    def __init__(self, alias: str, lease_seconds: float) -> None:
        self.alias = alias
        self.lease_seconds = lease_seconds
        self.tokens: set[uuid.UUID] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="ie-lease-keeper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    @contextmanager
    def holding(self, token: uuid.UUID) -> Iterator[None]:
        """Keep ``token``'s leases fresh for the duration of the block."""
        with self._lock:
            self.tokens.add(token)
        try:
            yield
        finally:
            with self._lock:
                self.tokens.discard(token)

    def renew(self) -> int:
        with self._lock:
            tokens = list(self.tokens)
        if not tokens:
            return 0
        renewed = sum(
            model.objects.using(self.alias).renew(tokens, self.lease_seconds)
            for model in (ReceivedMessage, PublishedMessage)
        )
        # The concurrency slots a unit holds are leased under its claim's token too.
        GroupSlot.objects.using(self.alias).filter(
            holder__in=[str(t) for t in tokens]).update(lease_until=after(self.lease_seconds))
        return renewed

    def _run(self) -> None:
        interval = max(0.05, self.lease_seconds / 3)
        try:
            while not self._stop.wait(interval):
                try:
                    self.renew()
                except Exception:
                    # A blip (database restart) must not kill the keeper; the next turn retries
                    # and the lease is three intervals long.
                    logger.warning("lease renewal failed alias=%s", self.alias, exc_info=True,
                                   extra={"alias": self.alias})
                    connections[self.alias].close()
        finally:
            connections[self.alias].close()
