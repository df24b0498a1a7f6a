"""The in-process execute step of this checkout against an earlier commit, interleaved.

    .venv/bin/python bench/compare_commits.py                  # against 72cd913, PostgreSQL
    .venv/bin/python bench/compare_commits.py --base <commit> --rounds 9 --messages 1000

The earlier commit is checked out into a temporary git worktree (never committed), and each
side runs in a long-lived child process of its own code, with its own throw-away database
(Django's test runner: test_cmp_base / test_cmp_head). The parent tells the two children to
measure one round each in turn (base, head, base, head, ...), so slow moments of the shared
machine fall on both. A round: publish N events (2 groups each), fan them out, then time
only the execute step (Worker.execute_batch until nothing is left), wall and CPU.
Prints the medians and the ratio head / base of deliveries per second (goal >= 0.95).

With --bridge, the deliveries are a bridge's instead (issue 12's sending path): N events
of one topic sent by the group bridge:out with its default settings to a RabbitMQ exchange
of each side's own (127.0.0.1:5672, guest/guest), whose queue is emptied every round.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The commit main was at when the engine's redesign was asked for (issue 10).
DEFAULT_BASE = "72cd913"

CHILD = r"""
import json, os, sys, time
sys.path.insert(0, os.getcwd())
import django
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
django.setup()
from django.test.utils import get_runner, setup_test_environment
from django.test import override_settings
setup_test_environment()
runner = get_runner(django.conf.settings)(verbosity=0, interactive=False)
old = runner.setup_databases()
from django.db import connection
from integration_events import publish_many
from integration_events.models import PublishedMessage, ReceivedMessage
from integration_events.worker import Worker
from tests.eventapp.events import ProbeHappened
from tests.eventapp.models import Delivery
n = int(sys.argv[1])
bridge = os.environ.get("IE_CMP_BRIDGE") == "1"
Event, per_event, config = ProbeHappened, 2, {"NUDGE": False}
if bridge:
    import pika
    from tests.eventapp.events import LonelyHappened
    exchange = queue = "cmp-" + os.environ["IE_DB_NAME"]
    amqp = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", 5672))
    channel = amqp.channel()
    channel.exchange_declare(exchange, "topic", durable=True)
    channel.queue_declare(queue, durable=True)
    channel.queue_bind(queue, exchange, "#")
    Event, per_event = LonelyHappened, 1
    config["BRIDGES"] = {"out": {"TRANSPORT": "amqp", "EXCHANGE": exchange,
                                 "URL": "amqp://guest:guest@127.0.0.1:5672/%2F",
                                 "SEND": [LonelyHappened.topic]}}
print("ready", flush=True)
try:
    with override_settings(INTEGRATION_EVENTS=config):
        for line in sys.stdin:
            if line.strip() != "go":
                break
            for model in (Delivery, ReceivedMessage, PublishedMessage):
                model.objects.all()._raw_delete(connection.alias)
            if bridge:
                channel.queue_purge(queue)
            publish_many([Event(n=i) for i in range(n)])
            worker = Worker(keep_leases=False)
            while worker.dispatch_batch().dispatched:
                pass
            wall, cpu, done = time.perf_counter(), time.process_time(), 0
            while True:
                got = worker.execute_batch().succeeded
                if not got:
                    break
                done += got
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            assert done == per_event * n, done
            print(json.dumps({"per_s": done / wall, "cpu_us": cpu * 1e6 / done}), flush=True)
finally:
    if bridge:  # the sender's second connections (the claim journal's, the resolver's)
        from integration_events import journal
        from integration_events.bridging import resolver
        resolver.close()
        journal.close_connections()
        channel.queue_delete(queue)
        channel.exchange_delete(exchange)
        amqp.close()
    runner.teardown_databases(old)
"""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", default=DEFAULT_BASE)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--messages", type=int, default=1000)
    p.add_argument("--db", choices=("postgres", "sqlite"), default="postgres")
    p.add_argument("--bridge", action="store_true",
                   help="a bridge's sending path (RabbitMQ) instead of local handlers")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ie-base-"))
    base_dir = work / "base"
    subprocess.run(["git", "worktree", "add", "--detach", "-q", str(base_dir), args.base],
                   cwd=ROOT, check=True)
    children: dict[str, subprocess.Popen[str]] = {}
    try:
        for side, cwd in (("base", base_dir), ("head", ROOT)):
            env = {**os.environ, "IE_DB": args.db, "IE_DB_NAME": f"cmp_{side}",
                   "IE_SQLITE_TEST_PATH": str(work / f"{side}.sqlite3"),
                   "IE_VAR_DIR": str(work / f"var-{side}"), "IE_LOG_LEVEL": "WARNING",
                   "DJANGO_DEBUG": "0", "PYTHONPATH": str(cwd),
                   "IE_CMP_BRIDGE": "1" if args.bridge else "0"}
            children[side] = subprocess.Popen(
                [sys.executable, "-c", CHILD, str(args.messages)], cwd=cwd, env=env,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            ready = children[side].stdout.readline().strip()  # type: ignore[union-attr]
            if ready != "ready":
                raise RuntimeError(f"{side} child did not start")
        results: dict[str, list[dict[str, float]]] = {"base": [], "head": []}
        for round_no in range(args.rounds):
            for side in ("base", "head") if round_no % 2 == 0 else ("head", "base"):
                child = children[side]
                child.stdin.write("go\n")  # type: ignore[union-attr]
                child.stdin.flush()  # type: ignore[union-attr]
                results[side].append(json.loads(child.stdout.readline()))  # type: ignore[union-attr]
            print(f"[{time.strftime('%H:%M:%S')}] round {round_no + 1}: "
                  f"base {results['base'][-1]['per_s']:,.0f}/s, "
                  f"head {results['head'][-1]['per_s']:,.0f}/s", flush=True)
        med = {side: {k: statistics.median(r[k] for r in rs) for k in ("per_s", "cpu_us")}
               for side, rs in results.items()}
        ratio = med["head"]["per_s"] / med["base"]["per_s"]
        what = "bridge:out" if args.bridge else "x 2"
        print(f"\nexecute step, {args.messages} {what} deliveries, {args.rounds} interleaved "
              f"rounds, "
              f"{args.db}: base {args.base} {med['base']['per_s']:,.0f}/s "
              f"({med['base']['cpu_us']:.0f} us CPU per delivery), head "
              f"{med['head']['per_s']:,.0f}/s ({med['head']['cpu_us']:.0f} us): "
              f"ratio x{ratio:.2f} (goal >= 0.95)")
    finally:
        for child in children.values():
            if child.stdin:
                child.stdin.close()
            child.wait(timeout=120)
        subprocess.run(["git", "worktree", "remove", "--force", str(base_dir)], cwd=ROOT,
                       check=False)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
