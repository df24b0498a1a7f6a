"""Two services over RabbitMQ: the demo project twice, on two databases (IE_SERVICE picks
its sample apps: accounts in one, equipment and files in the other), each with its own
qcluster and integration_events_consume, as scripts/demo-two-services.sh runs them. A user
deleted in the accounts service has their files purged in the inventory service, exactly
once, even when the message arrives again."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pika
import pytest
from django.db import connection

from tests.conftest import ROOT, wait_for

pytestmark = [
    pytest.mark.cluster,
    # The services run on SQLite files of their own whatever the suite's database is: one
    # run (the SQLite one) covers them.
    pytest.mark.skipif(connection.vendor != "sqlite",
                       reason="its two services run on SQLite; the SQLite run covers it"),
]


class Service:
    """One copy of the demo project as the demo script runs it: its own SQLite database,
    var/ and processes."""

    def __init__(self, name: str, home: Path, url: str, exchange: str, queues: str) -> None:
        self.name, self.home = name, home
        home.mkdir(parents=True, exist_ok=True)
        keep = {k: v for k, v in os.environ.items() if not k.startswith(("IE_", "DJANGO_"))}
        self.env = {**keep, "DJANGO_SETTINGS_MODULE": "project.settings", "IE_SERVICE": name,
                    "IE_DB": "sqlite", "IE_VAR_DIR": str(home),
                    "IE_SQLITE_PATH": str(home / "db.sqlite3"), "IE_AMQP_URL": url,
                    "IE_AMQP_EXCHANGE": exchange, "IE_AMQP_QUEUE_PREFIX": queues,
                    "IE_DEMO_FAULTS": "0",
                    "PYTHONUNBUFFERED": "1"}
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        log = open(self.home / f"{args[0]}.log", "wb")  # noqa: SIM115 - the process's
        proc = subprocess.Popen([sys.executable, str(ROOT / "manage.py"), *args], cwd=ROOT,
                                env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs.append((args[0], proc))
        return proc

    def log(self, command: str) -> str:
        return (self.home / f"{command}.log").read_text(errors="replace")

    def logs(self) -> str:
        return "\n".join(f"--- {self.name} {c}\n{self.log(c)[-3000:]}" for c, _ in self.procs)

    def one(self, sql: str, *params: Any) -> Any:
        with sqlite3.connect(self.home / "db.sqlite3", timeout=20) as db:
            return db.execute(sql, params).fetchone()[0]

    def stop(self) -> None:
        for _, proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for _, proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def test_a_user_deleted_in_one_service_has_their_files_purged_in_the_other_once(
        tmp_path: Path, url: str, peer: Any, unique: Callable[[str], str]) -> None:
    """scripts/demo-two-services.sh --once (the README's command, without the admins) tells
    its story; then the UserDeleted it sent arrives twice more, and inventory's consumer
    stores it once."""
    if not (ROOT / ".venv" / "bin" / "python").exists():
        pytest.skip("the demo script runs the project's .venv (scripts/test.sh makes it)")
    exchange, queues = unique("demo"), unique("queues") + "."
    # A spy on the exchange keeps a copy of what accounts sends, to send it again later.
    spy = unique("spy")
    peer.exchange_declare(exchange, "topic", durable=True)
    peer.queue_declare(spy)
    peer.queue_bind(spy, exchange, "accounts.user-deleted")
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("IE_", "DJANGO_"))}
    try:
        _demo_then_copies(tmp_path, url, exchange, queues, spy, keep)
    finally:  # the services' queues are this test's own (not the demo's inventory.v1)
        for service in ("accounts", "inventory"):
            peer.queue_delete(f"{queues}{service}.v1")


def _demo_then_copies(tmp_path: Path, url: str, exchange: str, queues: str, spy: str,
                      keep: dict[str, str]) -> None:
    done = subprocess.run(
        [str(ROOT / "scripts" / "demo-two-services.sh"), "--once"], cwd=ROOT,
        env={**keep, "IE_VAR_DIR": str(tmp_path), "IE_AMQP_URL": url,
             "IE_AMQP_EXCHANGE": exchange, "IE_AMQP_QUEUE_PREFIX": queues},
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for line in ("inventory knows user", "accounts knows ada holds the drill",
                 "inventory purged ada's files and checked the drill in",
                 "accounts heard the drill is back", "Two-services demo done."):
        assert line in done.stdout, done.stdout
    # The demo's own databases, queues and settings (scripts/demo-two-services.sh: run()).
    accounts, inventory = (Service(name, tmp_path / "two-services" / name, url, exchange,
                                   queues) for name in ("accounts", "inventory"))
    # ada is gone from accounts; inventory keeps who she was (deleted_at set).
    user_id = inventory.one("SELECT user_id FROM equipment_knownuser "
                            "WHERE deleted_at IS NOT NULL")
    assert accounts.one("SELECT count(*) FROM auth_user WHERE id=?", user_id) == 0
    assert inventory.one("SELECT count(*) FROM files_storedfile WHERE owner_id=?", user_id) == 0
    purge = ("SELECT json_extract(content, '$.file_count') FROM "
             "integration_events_publishedmessage WHERE topic='files.user-files-purged'")
    assert inventory.one(purge) == 2, "both of ada's files were there, and purged"
    purged = ("SELECT count(*) FROM integration_events_receivedmessage WHERE "
              "topic='accounts.user-deleted' AND \"group\"='files' AND status='succeeded'")
    assert inventory.one(purged) == 1

    # The same message twice more (a CAP producer retrying, or a redelivery), while
    # inventory's consumer is down: it takes them when it starts again.
    with pika.BlockingConnection(pika.URLParameters(url)) as connection:
        channel = connection.channel()
        method, properties, body = channel.basic_get(spy, auto_ack=True)
        assert method is not None and properties.headers["cap-msg-name"] == \
            "accounts.user-deleted"
        for _ in range(2):
            channel.basic_publish(exchange, method.routing_key, body, properties)
    try:
        consume = inventory.start("integration_events_consume")
        wait_for(lambda: "consuming queue" in inventory.log("integration_events_consume"),
                 60, "inventory's consumer", inventory.logs)
        time.sleep(1.0)  # the copies are in the queue; let the consumer take them
        consume.send_signal(signal.SIGTERM)
        consume.wait(timeout=20)
        report = inventory.log("integration_events_consume")  # its last line sums up
        assert "stopped: 0 stored, 2 duplicates" in report, inventory.logs()
    finally:
        inventory.stop()
    received = ("SELECT count(*) FROM integration_events_publishedmessage WHERE "
                "origin='rabbit' AND topic='accounts.user-deleted'")
    assert inventory.one(received) == 1
    assert inventory.one("SELECT count(*) FROM integration_events_receivedmessage WHERE "
                         "topic='accounts.user-deleted' AND \"group\"='files'") == 1
    assert inventory.one("SELECT max(attempts) FROM integration_events_receivedmessage WHERE "
                         "topic='accounts.user-deleted' AND \"group\"='files'") == 1
    # The chain went on across the services: inventory checked the drill in on UserDeleted,
    # and accounts heard of it, in the same correlation as the deletion.
    chain = ("SELECT count(DISTINCT correlation_id) FROM integration_events_publishedmessage "
             "WHERE topic IN ('accounts.user-deleted', 'equipment.equipment-checked-in')")
    assert accounts.one(chain) == 1

