"""Scenario 6: restart the database server in the middle of delivery.

Restarting PostgreSQL or MariaDB disturbs everything else using that server for a few
seconds, so this scenario only runs when IE_RELIABILITY_DB_RESTART=1 (CI sets it; the server
there is the suite's own)."""

from __future__ import annotations

import os
import subprocess
import time

import pytest
from django.db import connection, connections

from integration_events import publish_many

from .harness import _db, assert_clean, audit, report, settle, size, suite_settings
from .probe.events import LoadApplied
from .probe.models import Effect

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.reliability,
    pytest.mark.skipif(os.environ.get("IE_RELIABILITY_DB_RESTART") != "1",
                       reason="restarts the database server: set IE_RELIABILITY_DB_RESTART=1"),
]


def restart_server(vendor: str) -> None:
    if vendor == "postgresql":
        version = os.listdir("/etc/postgresql")[0]
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main",
                        "restart"], check=True, timeout=60)
    elif vendor == "mysql":
        # A crash, not a polite shutdown: SIGKILL the server (InnoDB recovers on start), which
        # is also what makes this take seconds instead of MariaDB's minute-long shutdown.
        subprocess.run(["pkill", "-KILL", "-x", "mariadbd"], timeout=10)
        deadline = time.monotonic() + 30
        while subprocess.run(["pgrep", "-x", "mariadbd"], capture_output=True).returncode == 0:
            assert time.monotonic() < deadline, "MariaDB did not die"
            time.sleep(0.2)
        subprocess.run(["start-stop-daemon", "--start", "--oknodo", "--background",
                        "--exec", "/usr/sbin/mariadbd", "--", "--user=mysql"],
                       check=True, timeout=30)
        deadline = time.monotonic() + 60
        while subprocess.run(["mariadb-admin", "-h127.0.0.1", "-uroot", "ping"],
                             capture_output=True).returncode != 0:
            assert time.monotonic() < deadline, "MariaDB did not come back"
            time.sleep(0.5)
    else:  # pragma: no cover
        raise AssertionError(vendor)


def test_database_restart_mid_delivery(clusters) -> None:
    vendor = connection.vendor
    if vendor == "sqlite":
        pytest.skip("SQLite has no server to restart")
    count = size(600, 3000)
    clusters.start(IE_MAX_ATTEMPTS=20, IE_LEASE_SECONDS=3)
    started = time.monotonic()
    ids = [m.pk for m in publish_many(
        LoadApplied(n=n, behaviour="sleep:0.005") for n in range(count))]
    from tests.conftest import wait_for

    wait_for(lambda: Effect.objects.count() > count // 4, 60, "deliveries under way")
    before = Effect.objects.count()
    for conn in connections.all():
        conn.close()
    restart_server(vendor)
    for conn in connections.all():
        conn.close()
    with suite_settings(MAX_ATTEMPTS=20):
        seconds = settle(240, "delivery after the restart", clusters.logs)
    a = _db(lambda: audit(ids))
    report(a.result("database restart", time.monotonic() - started,
                    f"restarted after {before} effects; quiet {seconds:.1f}s later"))
    assert_clean(a)
