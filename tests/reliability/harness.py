"""Shared machinery of the reliability suite: sizes, clusters, settling, auditing, the table."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connection, connections
from django.db.utils import DatabaseError, InterfaceError
from django.test import override_settings

from integration_events.models import MessageStatus, PublishedMessage, ReceivedMessage
from tests.conftest import ROOT, Cluster

from .probe.models import Effect

FULL = os.environ.get("IE_RELIABILITY_FULL") == "1"
GROUPS = ("rel-a", "rel-b")
CALLBACK = "tests.reliability.probe.callbacks.record_failed"
NON_TERMINAL = (MessageStatus.PENDING, MessageStatus.RETRYING, MessageStatus.PROCESSING)


def size(ci: int, full: int) -> int:
    return full if FULL else ci


def vendor() -> str:
    return connection.vendor


# --- results table ---------------------------------------------------------------------------

@dataclass
class Result:
    scenario: str
    database: str
    published: int = 0
    expected: int = 0
    delivered: int = 0
    duplicates: int = 0
    lost: int = 0
    failed: int = 0
    seconds: float = 0.0
    note: str = ""


RESULTS: list[Result] = []


def report(result: Result) -> Result:
    RESULTS.append(result)
    print(f"\n[reliability] {format_row(result)}")
    path = os.environ.get("IE_RELIABILITY_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(asdict(result)) + "\n")
    return result


HEADER = ("scenario", "db", "published", "expected", "delivered", "dupes", "lost", "failed",
          "quiesce s", "note")


def format_row(r: Result) -> str:
    return (f"{r.scenario:<26} {r.database:<10} {r.published:>9} {r.expected:>8} "
            f"{r.delivered:>9} {r.duplicates:>5} {r.lost:>4} {r.failed:>6} {r.seconds:>9.1f}  "
            f"{r.note}")


def table(results: Iterable[Result]) -> list[str]:
    lines = [(f"{HEADER[0]:<26} {HEADER[1]:<10} {HEADER[2]:>9} {HEADER[3]:>8} {HEADER[4]:>9} "
              f"{HEADER[5]:>5} {HEADER[6]:>4} {HEADER[7]:>6} {HEADER[8]:>9}  {HEADER[9]}")]
    lines += [format_row(r) for r in results]
    return lines


# --- clusters --------------------------------------------------------------------------------

class Clusters:
    """Starts real qcluster subprocesses with the suite's environment; kills them all at the end."""

    def __init__(self, name: str, tmp: Path) -> None:
        self.name = name
        self.journal = tmp / "journal.log"
        self.started: list[Cluster] = []
        self.base_env = {
            "IE_REL_JOURNAL": str(self.journal),
            "IE_FAILED_THRESHOLD_CALLBACK": CALLBACK,
            "IE_LEASE_SECONDS": "2",
        }

    def start(self, **env: Any) -> Cluster:
        log = f"rel-{self.name}-{vendor()}-{os.getpid()}-{len(self.started)}"
        c = Cluster({**self.base_env, **{k: str(v) for k, v in env.items()}}, log_name=log)
        self.started.append(c.start())
        return c

    def logs(self) -> str:
        return "\n".join(f"--- {c.log_path}\n{c.log()[-3000:]}" for c in self.started)

    def close(self) -> None:
        for c in self.started:
            c.kill()


def kill_group(c: Cluster) -> None:
    assert c.proc is not None
    with contextlib.suppress(ProcessLookupError):
        os.killpg(c.proc.pid, signal.SIGKILL)
    c.proc.wait(timeout=10)


def group_alive(pgid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-g", str(pgid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


# --- settling --------------------------------------------------------------------------------

def suite_settings(**extra: Any) -> override_settings:
    """The test process's engine settings for the sweeps it runs (the cluster has its own)."""
    return override_settings(INTEGRATION_EVENTS={
        **settings.INTEGRATION_EVENTS, "FAILED_THRESHOLD_CALLBACK": CALLBACK, **extra,
    })


def _db(fn: Any, default: Any = None) -> Any:
    """Run fn; if the database connection broke (a restart), drop it and report default."""
    try:
        return fn()
    except (DatabaseError, InterfaceError):
        for conn in connections.all():
            conn.close()
        return default


def non_terminal() -> int:
    return sum(
        m.objects.filter(status__in=NON_TERMINAL).count()
        for m in (PublishedMessage, ReceivedMessage)
    )


def settle(timeout: float, what: str, logs: Any = None, *, sweep_every: float = 1.0,
           sweeper: Any = None, expected_terminal: int | None = None) -> float:
    """Sweep now and then (what the minute schedule does) until no message is pending,
    retrying or processing. Returns the seconds it took."""
    from integration_events.tasks import sweep

    sweeper = sweeper or sweep
    started = time.monotonic()
    last_sweep = 0.0
    while time.monotonic() - started < timeout:
        if time.monotonic() - last_sweep >= sweep_every:
            _db(sweeper)
            last_sweep = time.monotonic()
        left = _db(non_terminal, default=-1)
        if left == 0 and (expected_terminal is None
                          or _db(ReceivedMessage.objects.count, -1) >= expected_terminal):
            return time.monotonic() - started
        time.sleep(0.2)
    counts = _db(lambda: {
        m.__name__: dict(Counter(m.objects.values_list("status", flat=True)))
        for m in (PublishedMessage, ReceivedMessage)
    })
    raise AssertionError(
        f"not quiescent after {timeout}s waiting for {what}: {counts}\n"
        f"{logs() if callable(logs) else ''}"
    )


# --- auditing --------------------------------------------------------------------------------

@dataclass
class Audit:
    published: int
    expected: int
    delivered: int
    duplicates: int
    lost: int
    failed: int
    problems: list[str] = field(default_factory=list)

    def result(self, scenario: str, seconds: float, note: str = "") -> Result:
        return Result(scenario, vendor(), self.published, self.expected, self.delivered,
                      self.duplicates, self.lost, self.failed, round(seconds, 1), note)


def audit(message_ids: Iterable[uuid.UUID], groups: Iterable[str] = GROUPS, *,
          expect_failed: Iterable[tuple[uuid.UUID, str]] = ()) -> Audit:
    """Every (message, group) of ``message_ids`` x ``groups`` succeeded once in the inbox with
    exactly one committed Effect, except ``expect_failed`` pairs, which must be failed with no
    Effect. Also: nothing non-terminal, no live claim anywhere."""
    ids = set(message_ids)
    groups = tuple(groups)
    failed_pairs = set(expect_failed)
    expected = {(m, g) for m in ids for g in groups} - failed_pairs
    inbox = {(m, g): s for m, g, s in ReceivedMessage.objects.filter(message_id__in=ids)
             .values_list("message_id", "group", "status")}
    effects = Counter(Effect.objects.filter(message_id__in=ids).values_list("message_id", "group"))
    problems: list[str] = []
    delivered = sum(1 for p in expected if inbox.get(p) == MessageStatus.SUCCEEDED
                    and effects.get(p, 0) >= 1)
    duplicates = sum(n - 1 for n in effects.values() if n > 1)
    lost = len(expected) - delivered
    failed = sum(1 for s in inbox.values() if s == MessageStatus.FAILED)
    for p in failed_pairs:
        if inbox.get(p) != MessageStatus.FAILED:
            problems.append(f"{p} should be failed, is {inbox.get(p)}")
        if effects.get(p):
            problems.append(f"{p} failed but left {effects[p]} effect(s)")
    stray = set(effects) - expected - failed_pairs
    if stray:
        problems.append(f"{len(stray)} effects for pairs never expected, e.g. {sorted(stray)[:3]}")
    published = PublishedMessage.objects.filter(pk__in=ids).count()
    if published != len(ids):
        problems.append(f"{len(ids) - published} committed messages are missing from the outbox")
    if non_terminal():
        problems.append(f"{non_terminal()} rows still pending/retrying/processing")
    live = sum(m.objects.exclude(lease_token=None).count()
               for m in (PublishedMessage, ReceivedMessage))
    if live:
        problems.append(f"{live} rows still hold a claim (lease_token set)")
    missing = sorted(p for p in expected if inbox.get(p) != MessageStatus.SUCCEEDED)
    if missing:
        problems.append(f"{len(missing)} pairs not succeeded, e.g. "
                        f"{[(str(m), g, inbox.get((m, g))) for m, g in missing[:3]]}")
    return Audit(len(ids), len(expected), delivered, duplicates, lost, failed, problems)


def assert_clean(a: Audit) -> None:
    assert a.duplicates == 0, a
    assert a.lost == 0, a
    assert not a.problems, a.problems


# --- the journal: overlapping runs -----------------------------------------------------------

def overlapping_runs(journal: Path) -> tuple[int, list[str]]:
    """Runs (start..end per process) recorded in the journal; returns the number of runs and
    the (message, group) pairs that had two runs at the same time."""
    if not journal.exists():
        return 0, []
    open_runs: dict[tuple[str, str, str], float] = {}
    runs: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    for line in journal.read_text().splitlines():
        parts = line.split()
        if len(parts) != 6:
            continue
        mid, group, what, t, pid, _pgid = parts
        key = (mid, group, pid)
        if what == "start":
            open_runs[key] = float(t)
        elif key in open_runs:
            runs[(mid, group)].append((open_runs.pop(key), float(t)))
    for (mid, group, _pid), start in open_runs.items():  # killed mid-run: open-ended
        runs[(mid, group)].append((start, float("inf")))
    overlaps = []
    for pair, spans in runs.items():
        spans.sort()
        for (_s1, e1), (s2, _e2) in zip(spans, spans[1:], strict=False):
            if s2 < e1:
                overlaps.append(f"{pair}: {spans}")
                break
    return sum(len(s) for s in runs.values()), overlaps


# --- processes -------------------------------------------------------------------------------

def manage_py_shell(
    code: str, env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh Django process against the test database."""
    c = Cluster(env)
    return subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "shell", "-c", code],
        cwd=ROOT, env=c.env(), capture_output=True, text=True, timeout=timeout,
    )


def jitter(lo: float, hi: float) -> float:
    return random.uniform(lo, hi)
