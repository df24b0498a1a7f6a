"""First benchmark of the engine (the performance issue extends it).

    .venv/bin/python bench/bench_core.py                 # SQLite
    IE_DB=postgres .venv/bin/python bench/bench_core.py  # PostgreSQL

1. Publish overhead: a realistic service call (five queries in one transaction) with and
   without publish(), interleaved in rounds; microseconds added and the ratio.
2. Delivery throughput: N events fanned out to two groups (probe handlers that write one row
   each), delivered by a real `manage.py qcluster`, against a raw-SQL loop doing the same
   statements (handler insert + inbox status update per delivery, one transaction each) in
   the same run.

It creates a throw-away test database (test_<name>), so it never touches your data.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
os.environ.setdefault("IE_DB_NAME", "bench")
os.environ.setdefault("IE_SQLITE_TEST_PATH", str(ROOT / "var" / "bench.sqlite3"))
os.environ.setdefault("IE_LOG_LEVEL", "WARNING")
# DEBUG off, as in production: with it on, every query is kept and formatted (bench/run.py too).
os.environ.setdefault("DJANGO_DEBUG", "0")

import django  # noqa: E402

django.setup()

from django.db import connection, transaction  # noqa: E402
from django.db.models import Max, Min  # noqa: E402
from tables import empty  # noqa: E402  (bench/tables.py)

from integration_events import publish_many  # noqa: E402
from integration_events.models import MessageStatus, PublishedMessage, ReceivedMessage  # noqa: E402
from integration_events.publisher import nudge  # noqa: E402
from integration_events.worker import Worker  # noqa: E402
from tests.eventapp.events import ProbeHappened  # noqa: E402
from tests.eventapp.models import Delivery  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from run import service_call  # noqa: E402  (the same five-query call as the full harness)


def bench_publish(rounds: int, per_round: int) -> dict[str, float]:
    base: list[float] = []
    with_pub: list[float] = []
    for r in range(rounds):
        for variant, sink in ((False, base), (True, with_pub)):
            started = time.perf_counter()
            for i in range(per_round):
                service_call(r * per_round + i, variant)
            sink.append((time.perf_counter() - started) / per_round * 1e6)
    b, p = statistics.median(base), statistics.median(with_pub)
    return {"service_us": b, "with_publish_us": p, "added_us": p - b, "ratio": p / b}


def bench_batch(count: int) -> float:
    events = [ProbeHappened(n=i) for i in range(count)]
    started = time.perf_counter()
    with transaction.atomic():
        publish_many(events)
    return count / (time.perf_counter() - started)


def reset() -> None:
    empty(ReceivedMessage, PublishedMessage, Delivery)  # bench/tables.py


def raw_sql_floor(events: int) -> float:
    """The same work with raw SQL on one connection: fan-out rows exist; per delivery one
    transaction with the handler's insert and the inbox status update."""
    reset()
    publish_many([ProbeHappened(n=i) for i in range(events)])
    Worker(keep_leases=False).dispatch_batch(limit=events)
    rows = list(ReceivedMessage.objects.values_list("pk", "message_id", "group"))
    q = connection.ops.quote_name
    inbox, delivery = q(ReceivedMessage._meta.db_table), q(Delivery._meta.db_table)
    message_id = ("%s" if connection.vendor != "sqlite" else "%s")
    started = time.perf_counter()
    with connection.cursor() as cursor:
        for pk, mid, group in rows:
            with transaction.atomic():
                cursor.execute(
                    f"INSERT INTO {delivery} (message_id, {q('group')}, n, attempt, "
                    f"correlation_sequence, created_at) VALUES ({message_id}, %s, 0, 1, 0, %s)",
                    [mid.hex if connection.vendor in ("sqlite", "mysql") else mid, group,
                     django.utils.timezone.now()],
                )
                cursor.execute(
                    f"UPDATE {inbox} SET status = %s WHERE id = %s", ["succeeded", pk])
    return len(rows) / (time.perf_counter() - started)


def cluster_throughput(events: int, workers: int) -> tuple[float, float]:
    """Deliveries per second by a real qcluster, from commit to the last handler finished."""
    from tests.conftest import Cluster

    reset()
    env = {"IE_Q_WORKERS": str(workers), "IE_LOG_LEVEL": "WARNING"}
    if connection.vendor == "sqlite":
        env["IE_SQLITE_PATH"] = str(connection.settings_dict["NAME"])
    else:
        env["IE_DB_NAME"] = str(connection.settings_dict["NAME"])
    cluster = Cluster(env, log_name="bench-qcluster").start()
    try:
        time.sleep(4)  # let the cluster start before the clock does
        with transaction.atomic():
            publish_many([ProbeHappened(n=i) for i in range(events)])
        started = time.perf_counter()
        nudge(force=True)
        expected = events * 2
        while ReceivedMessage.objects.filter(status=MessageStatus.SUCCEEDED).count() < expected:
            if time.perf_counter() - started > 600:
                raise SystemExit("cluster did not finish in 600 s:\n" + cluster.log())
            time.sleep(0.2)
        wall = time.perf_counter() - started
        span = ReceivedMessage.objects.aggregate(a=Min("created_at"), b=Max("finished_at"))
        db_span = (span["b"] - span["a"]).total_seconds()
    finally:
        cluster.stop()
    return expected / wall, expected / db_span


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--per-round", type=int, default=100)
    parser.add_argument("--publish-only", action="store_true",
                        help="measure publish overhead only (no cluster)")
    args = parser.parse_args()

    from django.test.utils import get_runner, setup_test_environment

    setup_test_environment()
    runner = get_runner(django.conf.settings)(verbosity=0, interactive=False)
    old = runner.setup_databases()
    try:
        print(f"database: {connection.vendor}  django {django.get_version()}  "
              f"python {sys.version.split()[0]}")
        print("publish overhead (median of rounds)...", flush=True)
        p = bench_publish(args.rounds, args.per_round)
        print(f"  service call             {p['service_us']:8.0f} us")
        print(f"  service call + publish   {p['with_publish_us']:8.0f} us")
        print(f"  added by publish         {p['added_us']:8.0f} us   ratio {p['ratio']:.2f}")
        print(f"  publish_many (1,000 in one transaction): {bench_batch(1000):8.0f} events/s")
        if args.publish_only:
            return
        print(f"delivery throughput, {args.events} events x 2 groups...", flush=True)
        raw = raw_sql_floor(args.events)
        print(f"  raw-SQL loop (1 connection)      {raw:8.0f} deliveries/s")
        wall, span = cluster_throughput(args.events, args.workers)
        print(f"  qcluster, {args.workers} workers (commit->done)  {wall:8.0f} deliveries/s "
              f"({span:.0f}/s first-created to last-finished)   ratio to raw {wall / raw:.2f}")
    finally:
        runner.teardown_databases(old)


if __name__ == "__main__":
    main()
