"""The raw-SQL floor: one consumer process doing the engine's work with plain psycopg (or sqlite3).

Started by bench/run.py, two at a time (the same number of connections as a 2-worker cluster).
Each process connects, prints "ready", waits for a line on stdin, then loops:

1. fan-out: claim up to CLAIM due outbox rows (FOR UPDATE SKIP LOCKED), insert one inbox row
   per group, mark the outbox rows succeeded; one transaction;
2. execute: claim up to BATCH due inbox rows joined to their message, and in one transaction
   run each "handler" (parse the JSON payload, insert one Delivery row) in its own savepoint,
   then mark the batch succeeded: the handler's write and its inbox status commit together,
   which is the engine's guarantee 2 and nothing more (no leases, no attempt counting in a
   committed statement of its own, no signals).

It stops when the Delivery table holds ``expected`` rows and prints one JSON line.

    python bench/raw_floor.py '{"vendor": "postgresql", "dsn": "...", "expected": 20000}'
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from datetime import UTC, datetime
from typing import Any

PUB = "integration_events_publishedmessage"
INBOX = "integration_events_receivedmessage"
DELIVERY = "eventapp_delivery"
GROUPS = (("probe-a", "tests.eventapp.subscribers.probe_a"),
          ("probe-b", "tests.eventapp.subscribers.probe_b"))


class Postgres:
    def __init__(self, cfg: dict[str, Any]) -> None:
        import psycopg

        self.conn = psycopg.connect(cfg["dsn"], autocommit=True)

    def fan_out(self, limit: int) -> int:
        with self.conn.transaction(), self.conn.cursor() as c:
            c.execute(
                f"SELECT id, topic FROM {PUB} WHERE status = 'pending' AND next_attempt_at <= now()"
                " ORDER BY next_attempt_at LIMIT %s FOR UPDATE SKIP LOCKED", [limit])
            rows = c.fetchall()
            if not rows:
                return 0
            c.executemany(
                f'INSERT INTO {INBOX} (message_id, "group", topic, handler, status, attempts, '
                "next_attempt_at, created_at, claimed_by, last_error) VALUES "
                "(%s, %s, %s, %s, 'pending', 0, now(), now(), '', '') "
                'ON CONFLICT (message_id, "group") DO NOTHING',
                [(pk, g, topic, h) for pk, topic in rows for g, h in GROUPS])
            c.execute(
                f"UPDATE {PUB} SET status = 'succeeded', attempts = attempts + 1, "
                "finished_at = now(), expires_at = now() + interval '1 day' WHERE id = ANY(%s)",
                [[pk for pk, _ in rows]])
            return len(rows)

    def execute(self, limit: int) -> int:
        with self.conn.transaction(), self.conn.cursor() as c:
            c.execute(
                f'SELECT r.id, r.message_id, r."group", p.content FROM {INBOX} r '
                f"JOIN {PUB} p ON p.id = r.message_id "
                "WHERE r.status = 'pending' AND r.next_attempt_at <= now() "
                "ORDER BY r.next_attempt_at LIMIT %s FOR UPDATE OF r SKIP LOCKED", [limit])
            rows = c.fetchall()
            if not rows:
                return 0
            for _pk, mid, group, content in rows:
                event = json.loads(content)
                c.execute("SAVEPOINT h")
                c.execute(
                    f'INSERT INTO {DELIVERY} (message_id, "group", n, attempt, '
                    "correlation_sequence, created_at) VALUES (%s, %s, %s, 1, 0, now())",
                    [mid, group, event["n"]])
                c.execute("RELEASE SAVEPOINT h")
            c.execute(
                f"UPDATE {INBOX} SET status = 'succeeded', attempts = attempts + 1, "
                "finished_at = now(), expires_at = now() + interval '1 day' WHERE id = ANY(%s)",
                [[r[0] for r in rows]])
            return len(rows)

    def delivered(self) -> int:
        with self.conn.cursor() as c:
            c.execute(f"SELECT count(*) FROM {DELIVERY}")
            return int(c.fetchone()[0])  # type: ignore[index]


class Sqlite:
    """No row locks: BEGIN IMMEDIATE takes the single writer lock, which serialises claimers."""

    NOW = "STRFTIME('%Y-%m-%d %H:%M:%f', 'NOW')"

    def __init__(self, cfg: dict[str, Any]) -> None:
        import sqlite3

        self.conn = sqlite3.connect(cfg["path"], timeout=20, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")

    def fan_out(self, limit: int) -> int:
        c = self.conn.cursor()
        c.execute("BEGIN IMMEDIATE")
        try:
            rows = c.execute(
                f"SELECT id, topic FROM {PUB} WHERE status = 'pending' AND next_attempt_at <= "
                f"{self.NOW} ORDER BY next_attempt_at LIMIT ?", [limit]).fetchall()
            if rows:
                c.executemany(
                    f'INSERT OR IGNORE INTO {INBOX} (message_id, "group", topic, handler, status, '
                    "attempts, next_attempt_at, created_at, claimed_by, last_error) VALUES "
                    f"(?, ?, ?, ?, 'pending', 0, {self.NOW}, {self.NOW}, '', '')",
                    [(pk, g, topic, h) for pk, topic in rows for g, h in GROUPS])
                c.execute(
                    f"UPDATE {PUB} SET status = 'succeeded', attempts = attempts + 1, "
                    f"finished_at = {self.NOW} WHERE id IN ({','.join('?' * len(rows))})",
                    [pk for pk, _ in rows])
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise
        return len(rows)

    def execute(self, limit: int) -> int:
        c = self.conn.cursor()
        c.execute("BEGIN IMMEDIATE")
        try:
            rows = c.execute(
                f'SELECT r.id, r.message_id, r."group", p.content FROM {INBOX} r '
                f"JOIN {PUB} p ON p.id = r.message_id WHERE r.status = 'pending' AND "
                f"r.next_attempt_at <= {self.NOW} ORDER BY r.next_attempt_at LIMIT ?",
                [limit]).fetchall()
            now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
            for _pk, mid, group, content in rows:
                event = json.loads(content)
                c.execute("SAVEPOINT h")
                c.execute(
                    f'INSERT INTO {DELIVERY} (message_id, "group", n, attempt, '
                    "correlation_sequence, created_at) VALUES (?, ?, ?, 1, 0, ?)",
                    [mid, group, event["n"], now])
                c.execute("RELEASE SAVEPOINT h")
            if rows:
                c.execute(
                    f"UPDATE {INBOX} SET status = 'succeeded', attempts = attempts + 1, "
                    f"finished_at = {self.NOW} WHERE id IN ({','.join('?' * len(rows))})",
                    [r[0] for r in rows])
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise
        return len(rows)

    def delivered(self) -> int:
        return int(self.conn.execute(f"SELECT count(*) FROM {DELIVERY}").fetchone()[0])


def main() -> None:
    cfg = json.loads(sys.argv[1])
    db = Postgres(cfg) if cfg["vendor"] == "postgresql" else Sqlite(cfg)
    claim, batch, expected = cfg.get("claim", 100), cfg.get("batch", 20), cfg["expected"]
    deadline = time.monotonic() + cfg.get("timeout", 600)
    print("ready", flush=True)
    sys.stdin.readline()
    started = time.monotonic()
    done = 0
    while time.monotonic() < deadline:
        worked = db.fan_out(claim)
        n = db.execute(batch)
        done += n
        if not worked and not n:
            if db.delivered() >= expected:
                break
            time.sleep(0.002)
    print(json.dumps({"delivered": done, "seconds": time.monotonic() - started,
                      "id": str(uuid.uuid4())}), flush=True)


if __name__ == "__main__":
    main()
