"""Scenarios 7, 8 and 9 and the security items: poison and bad input, graceful stop, expiry,
no pickle, tampered content, a changed SECRET_KEY."""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter

import pytest
from django.db import connection, transaction
from django.db.models.functions import Now

from integration_events import publish, publish_many
from integration_events.models import MessageStatus, PublishedMessage, ReceivedMessage
from integration_events.tasks import sweep

from .harness import (
    assert_clean,
    audit,
    manage_py_shell,
    report,
    settle,
    size,
    suite_settings,
)
from .probe.events import LoadApplied
from .probe.models import Effect, FailedCallback
from .probe.topics import ReliabilityTopics

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.reliability]

# Every printable oddity and every control character but NUL, which PostgreSQL's jsonb cannot
# store in the headers (json content escapes it; see test below).
WEIRD = ("é中文🙂\u200f\u202e<script>'\"\\ " + "".join(map(chr, range(1, 32))) + "\x7f\u2028")


def raw_message(topic: str, content: str) -> uuid.UUID:
    """A row as a buggy or hostile writer might leave it (bypassing publish())."""
    from integration_events.models import uuid7

    m = PublishedMessage.objects.create(
        id=uuid7(), topic=topic, content=content, headers={}, correlation_id=uuid7())
    return m.pk


def test_poison_and_bad_input_fail_only_their_own_message(clusters) -> None:
    clusters.start(IE_Q_TIMEOUT=6, IE_LEASE_SECONDS=2, IE_UNKNOWN_TOPIC_MAX_ATTEMPTS=3)
    started = time.monotonic()
    good = [m.pk for m in publish_many(LoadApplied(n=n) for n in range(size(200, 1000)))]
    big = publish(LoadApplied(n=-1, blob="x" * 1_000_000)).pk
    weird = publish(LoadApplied(n=-2, text=WEIRD + "\x00"), headers={"note": WEIRD}).pk
    poison = {
        "fail": publish(LoadApplied(n=-3, behaviour="fail", only_group="rel-a")).pk,
        "base": publish(LoadApplied(n=-4, behaviour="base", only_group="rel-a")).pk,
        "hang": publish(LoadApplied(n=-5, behaviour="hang", only_group="rel-a")).pk,
        "exit": publish(LoadApplied(n=-6, behaviour="exit", only_group="rel-a")).pk,
    }
    invalid = raw_message(ReliabilityTopics.LOAD_APPLIED, '{"n": "not a number"}')
    corrupt = raw_message(ReliabilityTopics.LOAD_APPLIED, '{"n": 1, "behaviour": ')
    unknown = raw_message(ReliabilityTopics.FROM_THE_FUTURE, '{"n": 1}')
    with suite_settings(UNKNOWN_TOPIC_MAX_ATTEMPTS=3):
        settle(240, "the poison to reach the dead letter", clusters.logs)
    a = audit([*good, big, weird, *poison.values(), invalid],
              expect_failed=[*[(p, "rel-a") for p in poison.values()],
                             (invalid, "rel-a"), (invalid, "rel-b")])
    # rel-b of each poison message succeeded (only_group limits the fault to rel-a); the
    # audit counts it among the delivered.
    reasons = {k: ReceivedMessage.objects.get(message_id=v, group="rel-a").last_error
               for k, v in poison.items()}
    dead_outbox = {str(k): PublishedMessage.objects.get(pk=k) for k in (corrupt, unknown)}
    calls = Counter(FailedCallback.objects.values_list("model", "key"))
    expected_calls = Counter(
        [("ReceivedMessage", str(r.pk)) for r in ReceivedMessage.objects.filter(
            status=MessageStatus.FAILED)]
        + [("PublishedMessage", k) for k in dead_outbox])
    report(a.result("poison mix", time.monotonic() - started,
                    f"dead letters {sum(expected_calls.values())}, callbacks "
                    f"{sum(calls.values())}"))
    assert_clean(a)
    assert reasons["fail"].startswith("RuntimeError") or "RuntimeError" in reasons["fail"]
    assert "ProbeBaseException" in reasons["base"]
    assert "Timeout" in reasons["hang"] or reasons["hang"].startswith("LeaseExpired")
    assert reasons["exit"].startswith("LeaseExpired")
    assert all(ReceivedMessage.objects.get(message_id=v, group="rel-a").attempts == 3
               for v in poison.values())
    assert ReceivedMessage.objects.get(message_id=invalid, group="rel-a").last_error.startswith(
        "InvalidMessage: the payload does not validate")
    assert dead_outbox[str(corrupt)].status == MessageStatus.FAILED
    assert dead_outbox[str(corrupt)].last_error.startswith("InvalidMessage: content is not valid")
    assert dead_outbox[str(unknown)].status == MessageStatus.FAILED
    assert dead_outbox[str(unknown)].last_error.startswith("UnknownTopic")
    assert dead_outbox[str(unknown)].attempts == 3
    assert calls == expected_calls, (calls, expected_calls)
    import hashlib

    digests = dict(Effect.objects.filter(message_id__in=[big, weird]).values_list(
        "message_id", "digest"))
    assert digests[big] == hashlib.sha256(b"x" * 1_000_000).hexdigest()
    assert digests[weird] == hashlib.sha256((WEIRD + "\x00").encode()).hexdigest()
    assert PublishedMessage.objects.get(pk=weird).headers["note"] == WEIRD


def test_graceful_stop_is_bounded_and_leaves_no_blocking_lease(clusters) -> None:
    lease = 2.0
    timeout = 12  # django-q2 timeout; the task budget is a quarter of it
    env = {"IE_Q_TIMEOUT": timeout, "IE_LEASE_SECONDS": lease}
    c = clusters.start(**env)
    started = time.monotonic()
    ids = [m.pk for m in publish_many(
        LoadApplied(n=n, behaviour="sleep:0.005") for n in range(size(1000, 4000)))]
    time.sleep(1.5)
    before = Effect.objects.count()
    took = c.stop(timeout=60)
    assert c.proc is not None and c.proc.returncode is not None
    # Any claim left behind must end within one lease period of the stop.
    blocking = ReceivedMessage.objects.filter(
        status=MessageStatus.PROCESSING,
        lease_until__gt=Now() + __import__("datetime").timedelta(seconds=lease)).count()
    clusters.start(**env)
    settle(180, "delivery after the restart", clusters.logs)
    a = audit(ids)
    report(a.result("graceful stop", time.monotonic() - started,
                    f"SIGTERM after {before} effects; stopped in {took:.1f}s"))
    assert blocking == 0
    # Bound: the running tasks finish their budget (timeout/4) and queued ones are idle.
    assert took < timeout / 4 * 3 + 5, f"stop took {took:.1f}s"
    assert_clean(a)


def test_expiry_never_deletes_pending_or_retrying_messages(clusters) -> None:
    clusters.start()
    started = time.monotonic()
    done = [m.pk for m in publish_many(LoadApplied(n=n) for n in range(20))]
    settle(60, "the first batch", clusters.logs)
    delayed = [publish(LoadApplied(n=100 + n), delay=3600).pk for n in range(5)]
    retrying = publish(LoadApplied(n=200, behaviour="fail", only_group="rel-a")).pk
    with suite_settings():
        from tests.conftest import wait_for

        wait_for(lambda: ReceivedMessage.objects.filter(
            message_id=retrying, group="rel-a", status=MessageStatus.RETRYING).exists(),
            30, "the failing message to be retrying")
    # Push the clock: every row looks ancient and past any expiry (a skewed or stale
    # expires_at on live rows must not matter either).
    long_ago = Now() - __import__("datetime").timedelta(days=400)
    for model in (PublishedMessage, ReceivedMessage):
        model.objects.update(created_at=long_ago, expires_at=long_ago)
        model.objects.filter(status=MessageStatus.RETRYING).update(
            next_attempt_at=Now() + __import__("datetime").timedelta(hours=1))
    with suite_settings(SUCCEEDED_EXPIRY=0.0, FAILED_EXPIRY=0.0):
        swept = sweep()
    live = set(PublishedMessage.objects.values_list("pk", flat=True))
    assert set(delayed) <= live, "expiry deleted a pending (delayed) message"
    assert retrying in live and ReceivedMessage.objects.filter(
        message_id=retrying, group="rel-a", status=MessageStatus.RETRYING).exists()
    assert not set(done) & live, "terminal messages past expiry were kept"
    assert PublishedMessage.objects.filter(status=MessageStatus.PENDING).count() == 5
    report(__import__("tests.reliability.harness", fromlist=["Result"]).Result(
        "expiry vs live rows", connection.vendor, 26, 0, 0, 0, 0, 0,
        round(time.monotonic() - started, 1),
        f"sweep {swept['default']}: 5 delayed + 1 retrying kept, 20 done deleted"))


def test_no_pickle_and_no_event_data_in_tasks_and_tampering_fails_cleanly(clusters) -> None:
    import pickle

    from django_q.models import OrmQ
    from django_q.signing import SignedPackage

    marker = f"marker-{uuid.uuid4()}"
    with transaction.atomic():
        ids = [m.pk for m in publish_many(LoadApplied(n=n, text=marker) for n in range(10))]
    for m in PublishedMessage.objects.filter(pk__in=ids):
        assert json.loads(m.content)["text"] == marker  # JSON, not a pickle
        assert not m.content.startswith(("\x80", "gAS", "(dp"))
    tasks = list(OrmQ.objects.all())
    assert tasks, "publishing enqueued no hand-off"
    for t in tasks:
        assert marker not in t.payload
        task = SignedPackage.loads(t.payload)
        assert task["args"] == ("default",) and not task["kwargs"], task
        assert not any(str(i) in repr(task) for i in ids)
    # Tampered rows: a pickle where the JSON was, and JSON that lies about its types.
    pickled = PublishedMessage.objects.get(pk=ids[0])
    pickled.content = pickle.dumps({"n": 1}, protocol=0).decode("latin-1")
    pickled.save(update_fields=["content"])
    PublishedMessage.objects.filter(pk=ids[1]).update(content='{"n": {"__reduce__": "os.system"}}')
    started = time.monotonic()
    clusters.start()
    settle(60, "delivery and clean failure", clusters.logs)
    a = audit(ids[2:])
    report(a.result("tampered content", time.monotonic() - started,
                    "pickle and lying JSON failed with a reason; the rest delivered"))
    assert_clean(a)
    first = PublishedMessage.objects.get(pk=ids[0])
    assert first.status == MessageStatus.FAILED
    assert first.last_error.startswith("InvalidMessage")
    second = ReceivedMessage.objects.filter(message_id=ids[1])
    assert {r.status for r in second} == {MessageStatus.FAILED}
    assert all(r.last_error.startswith("InvalidMessage") for r in second)
    assert not Effect.objects.filter(message_id__in=ids[:2]).exists()


SWEEP = "from integration_events.tasks import sweep; sweep()"


def test_changed_secret_key_loses_no_message(clusters) -> None:
    from django_q.models import OrmQ

    count = size(100, 1000)
    started = time.monotonic()
    ids = []
    for start in range(0, count, 10):  # several transactions: several queued tasks
        with transaction.atomic():
            ids += [m.pk for m in publish_many(
                LoadApplied(n=n) for n in range(start, start + 10))]
        time.sleep(0.05)
    queued = OrmQ.objects.count()
    assert queued >= 1
    new_key = {"DJANGO_SECRET_KEY": f"rotated-{uuid.uuid4()}"}
    c = clusters.start(**new_key)
    from tests.conftest import wait_for

    # The cluster cannot unsign the old tasks and drops them.
    wait_for(lambda: not OrmQ.objects.exists(), 30, "the cluster to drop the old tasks", c.log)
    time.sleep(1)
    dropped_with_nothing_done = Effect.objects.count() == 0

    def cluster_side_sweep() -> None:
        # What the cluster's own schedule runs, signed with the cluster's (new) key.
        proc = manage_py_shell(SWEEP, new_key)
        assert proc.returncode == 0, proc.stderr[-2000:]

    settle(120, "the sweep under the new key", clusters.logs, sweeper=cluster_side_sweep,
           sweep_every=3)
    a = audit(ids)
    report(a.result("SECRET_KEY rotated", time.monotonic() - started,
                    f"{queued} queued tasks dropped by the cluster; the sweep delivered"))
    assert dropped_with_nothing_done
    assert_clean(a)
