"""Ordering keys: what they cost the engine.

    IE_DB=postgres .venv/bin/python bench/ordering.py            # the figures in docs/ordering.md
    IE_DB=postgres .venv/bin/python bench/ordering.py --explain  # + the claim plan, 100,000+ rows

1. Throughput in-process (no cluster, no broker: the engine alone): N events fanned out to the
   probe's two groups and run by ``Worker.run_until_idle()``, unkeyed and keyed (the same
   event and handlers, 100 keys, published interleaved as a stream of several keys is),
   alternating which goes first, median deliveries per second of the rounds.
   On a checkout from before ordering keys it measures the unkeyed rounds only, to compare
   (so does ``--unkeyed-only``; bench/ordering_before_after.sh alternates the two checkouts).
2. ``--explain``: the claim's SELECT ... FOR UPDATE SKIP LOCKED, with EXPLAIN ANALYZE, over an
   inbox of 100,000+ rows (keyed and unkeyed, pending and finished), and the time of one
   claim when fewer heads are due than a claim takes (it then reads every waiting row).

It creates a throw-away test database (test_<name>), so it never touches your data.
"""

from __future__ import annotations

import argparse
import inspect
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
os.environ.setdefault("IE_DB_NAME", "bench_ordering")
os.environ.setdefault("IE_SQLITE_TEST_PATH", str(ROOT / "var" / "bench-ordering.sqlite3"))
os.environ.setdefault("IE_LOG_LEVEL", "WARNING")
os.environ.setdefault("DJANGO_DEBUG", "0")

import django  # noqa: E402

django.setup()

from django.db import connection, transaction  # noqa: E402
from django.test import override_settings  # noqa: E402
from tables import empty  # noqa: E402  (bench/tables.py)

from integration_events import publish_many  # noqa: E402
from integration_events.models import PublishedMessage, ReceivedMessage  # noqa: E402
from integration_events.worker import Worker  # noqa: E402
from tests.eventapp.events import ProbeHappened  # noqa: E402
from tests.eventapp.models import Delivery  # noqa: E402

HAS_KEYS = "ordering_key" in inspect.signature(publish_many).parameters
QUIET = {"NUDGE": False}

if HAS_KEYS:
    class KeyedProbe(ProbeHappened, ordering_key="text"):
        """ProbeHappened (same topic, same handlers) whose ``text`` is its ordering key."""


def reset() -> None:
    empty(ReceivedMessage, PublishedMessage, Delivery)  # bench/tables.py
    if HAS_KEYS:
        from integration_events.models import OrderingKey

        empty(OrderingKey)


def events(count: int, keys: int) -> list[Any]:
    if not keys:
        return [ProbeHappened(n=i) for i in range(count)]
    return [KeyedProbe(n=i, text=f"key-{i % keys}") for i in range(count)]


def backend_cpu() -> float:
    """CPU seconds used so far by this connection's PostgreSQL backend (same machine), or 0."""
    if connection.vendor != "postgresql":
        return 0.0
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


CPU: list[float] = []  # deliveries per CPU second (this process + its backend), per round


def one_round(count: int, keys: int) -> float:
    """Deliveries per second of one in-process run over ``count`` fresh events (wall clock;
    the rate per CPU second of this process and its database backend goes to CPU)."""
    reset()
    with transaction.atomic():
        publish_many(events(count, keys))
    worker = Worker(keep_leases=False)
    cpu = time.process_time() + backend_cpu()
    started = time.perf_counter()
    stats = worker.run_until_idle(max_passes=100_000)
    took = time.perf_counter() - started
    cpu = time.process_time() + backend_cpu() - cpu
    assert stats.succeeded == count * 2, stats
    CPU.append(count * 2 / cpu)
    return count * 2 / took


def throughput(count: int, rounds: int, keys: int) -> dict[str, float]:
    plain: list[float] = []
    keyed: list[float] = []
    cpu_plain: list[float] = []
    cpu_keyed: list[float] = []
    with override_settings(INTEGRATION_EVENTS=QUIET):
        for r in range(rounds):
            variants = [(0, plain)] + ([(keys, keyed)] if HAS_KEYS and keys else [])
            for k, sink in (variants if r % 2 == 0 else variants[::-1]):
                sink.append(one_round(count, k))
                (cpu_keyed if k else cpu_plain).append(CPU[-1])
                print(f"  round {r + 1}: {'keyed' if k else 'unkeyed'} {sink[-1]:7.0f}/s "
                      f"({CPU[-1]:.0f} per CPU second)", flush=True)
    result = {"unkeyed": statistics.median(plain), "unkeyed_cpu": statistics.median(cpu_plain)}
    if keyed:
        result["keyed"] = statistics.median(keyed)
        result["keyed_cpu"] = statistics.median(cpu_keyed)
    return result


# --- the claim's plan at 100,000+ rows --------------------------------------------------------


def fill(history: int, keys: int, per_key: int, unkeyed: int) -> None:
    """An inbox with ``history`` finished keyed rows, ``keys`` x ``per_key`` waiting keyed
    rows and ``unkeyed`` waiting unkeyed rows (x 2 groups), inserted directly."""
    from django.db.models.functions import Now

    from integration_events.models import MessageStatus

    reset()
    batch: list[PublishedMessage] = []

    def flush() -> None:
        PublishedMessage.objects.bulk_create(batch, batch_size=2000)
        receipts = [ReceivedMessage(message_id=m.pk, group=g, topic=m.topic,
                                    ordering_key=m.ordering_key, ordering_seq=m.ordering_seq,
                                    status=m.status)
                    for m in batch for g in ("probe-a", "probe-b")]
        ReceivedMessage.objects.bulk_create(receipts, batch_size=2000)
        batch.clear()

    from integration_events.publisher import _build

    def add(n: int, key: str, seq: int | None, status: str) -> None:
        m = _build(ProbeHappened(n=n), due=None, headers=None)
        m.ordering_key, m.ordering_seq, m.status = key, seq, status
        batch.append(m)
        if len(batch) >= 2000:
            flush()

    done = MessageStatus.SUCCEEDED
    for i in range(history):
        add(i, f"key-{i % keys}", i // keys + 1, done)
    base = history // keys + 1
    for step in range(per_key):
        for k in range(keys):
            add(step, f"key-{k}", base + step, MessageStatus.PENDING)
    for i in range(unkeyed):
        add(i, "", None, MessageStatus.PENDING)
    flush()
    ReceivedMessage.objects.filter(status=done).update(finished_at=Now())
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")


def claim_sql(limit: int) -> tuple[str, Any]:
    from integration_events.models import MessageStatus

    qs = (ReceivedMessage.objects.claimable(MessageStatus.PENDING)
          .select_for_update(skip_locked=True).values_list("pk", "group", "error_type")[:limit])
    return qs.query.sql_with_params()


def explain(limit: int) -> str:
    with transaction.atomic(), connection.cursor() as cursor:
        sql, params = claim_sql(limit)
        cursor.execute("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + sql, params)
        plan = "\n".join(row[0] for row in cursor.fetchall())
        transaction.set_rollback(True)
    return plan


def time_claim(limit: int, repeat: int = 5) -> float:
    took: list[float] = []
    for _ in range(repeat):
        with transaction.atomic(), connection.cursor() as cursor:
            sql, params = claim_sql(limit)
            started = time.perf_counter()
            cursor.execute(sql, params)
            rows = cursor.fetchall()
            took.append(time.perf_counter() - started)
            transaction.set_rollback(True)
    print(f"    ({len(rows)} rows claimed)")
    return statistics.median(took) * 1000


def plans() -> None:
    if connection.vendor != "postgresql":
        raise SystemExit("--explain needs PostgreSQL (IE_DB=postgres)")
    print("inbox: 100,000 finished keyed rows + 100 keys x 200 waiting + 10,000 unkeyed "
          "waiting (x 2 groups = 260,000 rows)", flush=True)
    fill(history=100_000, keys=100, per_key=200, unkeyed=10_000)
    print(explain(101))
    print(f"  one claim (101 rows): {time_claim(101):.1f} ms")
    print("inbox: 10 keys x 2,000 waiting, nothing else (fewer heads than a claim takes: "
          "it reads every waiting row)", flush=True)
    fill(history=0, keys=10, per_key=2_000, unkeyed=0)
    print(f"  one claim (101 rows): {time_claim(101):.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--keys", type=int, default=100)
    parser.add_argument("--explain", action="store_true")
    parser.add_argument("--no-throughput", action="store_true")
    parser.add_argument("--unkeyed-only", action="store_true",
                        help="unkeyed rounds only (to compare with a checkout from before)")
    args = parser.parse_args()

    from django.test.utils import get_runner, setup_test_environment

    setup_test_environment()
    runner = get_runner(django.conf.settings)(verbosity=0, interactive=False)
    old = runner.setup_databases()
    try:
        print(f"database: {connection.vendor}  django {django.get_version()}  "
              f"python {sys.version.split()[0]}  ordering keys: {HAS_KEYS}")
        if not args.no_throughput:
            print(f"in-process throughput, {args.events} events x 2 groups, {args.rounds} "
                  f"rounds, keyed: {args.keys} keys", flush=True)
            r = throughput(args.events, args.rounds, 0 if args.unkeyed_only else args.keys)
            line = f"  median: unkeyed {r['unkeyed']:.0f} deliveries/s"
            if "keyed" in r:
                line += (f", keyed {r['keyed']:.0f} deliveries/s, keyed/unkeyed "
                         f"{r['keyed'] / r['unkeyed']:.2f}")
            print(line)
            line = f"  per CPU second (engine + database backend): unkeyed {r['unkeyed_cpu']:.0f}"
            if "keyed" in r:
                line += (f", keyed {r['keyed_cpu']:.0f}, keyed/unkeyed "
                         f"{r['keyed_cpu'] / r['unkeyed_cpu']:.2f}")
            print(line)
        if args.explain:
            plans()
    finally:
        runner.teardown_databases(old)


if __name__ == "__main__":
    main()
