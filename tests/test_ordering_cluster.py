"""Ordering keys with real qclusters: keyed steps run in publish order per key and group under
failures and two clusters, and two publishing processes racing on the same keys are run in
the order they committed."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import defaultdict

import pytest
from django.db import connection
from django.db.models import Count

from integration_events import publish, publish_many
from integration_events.models import MessageStatus, PublishedMessage, ReceivedMessage
from tests.conftest import ROOT, Cluster, wait_for
from tests.eventapp.events import Stepped
from tests.eventapp.models import Published, Step

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.cluster]

GROUPS = ("steps-a", "steps-b")


def succeeded() -> int:
    return ReceivedMessage.objects.filter(status=MessageStatus.SUCCEEDED).count()


def runs_by_key_and_group() -> dict[tuple[str, str], list[Step]]:
    runs: dict[tuple[str, str], list[Step]] = defaultdict(list)
    for step in Step.objects.order_by("id"):  # id order: the order the runs committed in
        runs[(step.key, step.group)].append(step)
    return runs


def test_keyed_steps_run_in_publish_order_per_key_and_group(cluster) -> None:
    """40 keys x 10 steps, published step by step across the keys (while two clusters run),
    a fifth of them failing on their first attempt: in each group, every key's steps commit
    in the order they were published, each exactly once."""
    keys = [f"key-{k:02d}" for k in range(40)]
    # Quick retries: the first-attempt failures hold their keys back for the backoff.
    clusters = [cluster(IE_RETRY_BASE_DELAY="0.1"), cluster(IE_RETRY_BASE_DELAY="0.1")]
    failing = set()
    for step in range(10):
        events = []
        for k, key in enumerate(keys):
            behaviour = "ok"
            if (k + step) % 5 == 0:
                behaviour = "fail:1"
                failing.add((key, step))
            events.append(Stepped(key=key, step=step, behaviour=behaviour))
        if step % 2:
            publish_many(events)
        else:
            for event in events:
                publish(event)
    wait_for(lambda: succeeded() == 800, 150, "800 deliveries", clusters[0].log)
    runs = runs_by_key_and_group()
    assert set(runs) == {(key, group) for key in keys for group in GROUPS}
    for (key, group), steps in runs.items():
        assert [s.step for s in steps] == list(range(10)), (key, group)
        for s in steps:
            assert s.attempt == (2 if (key, s.step) in failing else 1), (key, group, s.step)
    assert Step.objects.count() == 800, "each of the 400 messages ran once in each group"
    assert len(failing) == 80
    if connection.vendor != "sqlite":  # SQLite has one writer: one process may do it all
        pids = set(Step.objects.values_list("pid", flat=True))
        assert len(pids) >= 2, "the work was shared by several worker processes"


def test_two_racing_publishers_are_run_in_commit_order(cluster) -> None:
    """Two processes publish 100 messages each on the same 5 keys, one transaction per
    message, holding it open a few milliseconds.

    Why the recorded order is the commit order: each publisher counts, inside its publishing
    transaction and right after publish(), the messages of that key it can see (READ
    COMMITTED on PostgreSQL and MariaDB; on SQLite the transaction holds the write lock from
    BEGIN). That count equals the message's ordering_seq exactly when every message of the
    key with a smaller number had committed before this transaction took its number; and a
    transaction commits after it takes its number. So if the count equals the seq for every
    message, the seq order of a key is its commit order. Then the runs of each key, in each
    group, must follow the seq order."""
    keys = ["alpha", "beta", "gamma", "delta", "epsilon"]
    c = cluster()
    env = Cluster().env()
    start = str(time.time() + 3)  # both publishers set up, then start together
    publishers = [
        subprocess.Popen([sys.executable, "-m", "tests.ordering_publisher", name, "100", start,
                          *keys],
                         cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for name in ("one", "two")
    ]
    for proc in publishers:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out.decode(errors="replace")[-3000:]
    wait_for(lambda: succeeded() == 400, 120, "400 deliveries", c.log)
    seq = dict(PublishedMessage.objects.values_list("pk", "ordering_seq"))
    records = list(Published.objects.all())
    assert len(records) == 200
    assert all(r.visible == seq[r.message_id] for r in records), [
        (r.key, r.publisher, r.visible, seq[r.message_id]) for r in records
        if r.visible != seq[r.message_id]][:10]
    by_key = defaultdict(list)
    for r in sorted(records, key=lambda r: seq[r.message_id]):
        by_key[r.key].append(r.publisher)
    interleaved = sum(1 for order in by_key.values()
                      for a, b in zip(order, order[1:], strict=False) if a != b)
    assert interleaved >= 10, "the two publishers really raced on the same keys"
    for (key, group), steps in runs_by_key_and_group().items():
        numbers = [seq[s.message_id] for s in steps]
        assert numbers == list(range(1, len(by_key[key]) + 1)), (key, group, numbers[:20])
    assert not Step.objects.values("message_id", "group").annotate(
        n=Count("id")).filter(n__gt=1).exists()


def test_a_dead_letter_blocks_its_key_until_skipped_or_requeued(cluster) -> None:
    """Key a's first step fails for good in both groups: key b runs on, key a waits; a skip
    in one group releases the rest of a there, in order; in the other group the dead letter,
    requeued once its cause is fixed, runs first."""
    from integration_events import operations

    c = cluster()
    head = publish(Stepped(key="a", step=1, behaviour="permanent"))
    publish_many([Stepped(key="a", step=2), Stepped(key="b", step=1), Stepped(key="a", step=3),
                  Stepped(key="b", step=2)])
    wait_for(lambda: Step.objects.filter(key="b").count() == 4 and ReceivedMessage.objects
             .filter(message=head, status=MessageStatus.FAILED).count() == 2, 60,
             "key b done and key a's head dead", c.log)
    time.sleep(1.0)  # the waiting steps of key a have every chance to run: they must not
    assert not Step.objects.filter(key="a").exists()
    receipts = {r.group: r for r in ReceivedMessage.objects.filter(message=head)}
    assert operations.skip_received([receipts["steps-a"]]) == 1
    wait_for(lambda: Step.objects.filter(key="a", group="steps-a").count() == 2, 60,
             "key a's rest in steps-a", c.log)
    PublishedMessage.objects.filter(pk=head.pk).update(
        content=Stepped(key="a", step=1).model_dump_json())
    assert operations.reexecute_received([receipts["steps-b"]]) == 1
    wait_for(lambda: Step.objects.filter(key="a", group="steps-b").count() == 3, 60,
             "key a in steps-b", c.log)
    runs = runs_by_key_and_group()
    assert [s.step for s in runs[("a", "steps-a")]] == [2, 3]
    assert [s.step for s in runs[("a", "steps-b")]] == [1, 2, 3]
    assert [s.step for s in runs[("b", "steps-a")]] == [1, 2]
