"""Shared fixtures: a worker, temporary subscribers, and a real qcluster subprocess."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.db import connection

from integration_events.claims import OldestFirst, claim
from integration_events.worker import Worker, default_claimer

ROOT = Path(__file__).resolve().parent.parent


def pytest_report_header(config: Any) -> list[str]:
    db = settings.DATABASES["default"]
    return [f"integration_events database: {connection.vendor} ({db['ENGINE']})"]


@pytest.fixture
def worker() -> Worker:
    """An in-process worker without the lease keeper thread (tests drive time themselves)."""
    return Worker(keep_leases=False)


def claim_rows(model: Any, limit: int, *, count_attempt: bool) -> list[Any]:
    """Claim up to ``limit`` due rows of ``model`` the way a worker does (oldest first), and
    return them: a test can then act as a worker that dies mid-handler."""
    return claim(model, "default", limit, default_claimer(), OldestFirst(),
                 count_attempt=count_attempt).rows


@pytest.fixture
def temp_subscriber() -> Iterator[Callable[..., Any]]:
    """Register subscribers for one test only: temp_subscriber(topic, group=...)(func)."""
    from integration_events.registry import subscriber, unregister

    registered: list[tuple[str, str]] = []

    def register(topic: str, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def deco(func: Callable[..., Any]) -> Callable[..., Any]:
            subscriber(topic, **kwargs)(func)
            registered.append((str(topic), kwargs["group"]))
            return func

        return deco

    yield register
    for topic, group in registered:
        unregister(topic, group)


def requires_row_locks() -> Any:
    return pytest.mark.skipif(
        not connection.features.has_select_for_update_skip_locked,
        reason=f"{connection.vendor} has no SELECT ... FOR UPDATE SKIP LOCKED",
    )


class Cluster:
    """A real `manage.py qcluster` subprocess against the test database."""

    def __init__(self, env: dict[str, str] | None = None, log_name: str = "qcluster") -> None:
        self.extra_env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = Path(os.environ.get("IE_VAR_DIR", ROOT / "var")) / f"{log_name}.log"

    def env(self) -> dict[str, str]:
        db = settings.DATABASES["default"]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
        if connection.vendor == "sqlite":
            env["IE_SQLITE_PATH"] = str(db["NAME"])
        else:
            env["IE_DB_NAME"] = str(db["NAME"])
        env.update(self.extra_env)
        return env

    def start(self) -> Cluster:
        log = open(self.log_path, "wb")  # noqa: SIM115 - kept open for the process's life
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "manage.py"), "qcluster"],
            cwd=ROOT, env=self.env(), stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def children(self) -> list[int]:
        assert self.proc is not None
        out = subprocess.run(["pgrep", "-g", str(self.proc.pid)], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split() if int(p) != self.proc.pid]

    def stop(self, timeout: float = 20.0) -> float:
        """SIGTERM to the main process only (signalling the whole group hangs qcluster), then
        SIGKILL the group if it has not stopped. Returns the seconds the stop took."""
        if self.proc is None:
            return 0.0
        started = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=timeout)
        took = time.monotonic() - started
        self.kill()
        return took

    def kill(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-5000:]
        except FileNotFoundError:
            return ""


@pytest.fixture
def cluster() -> Iterator[Callable[..., Cluster]]:
    started: list[Cluster] = []

    def start(**env: str) -> Cluster:
        c = Cluster({k: str(v) for k, v in env.items()}, log_name=f"qcluster-{len(started)}")
        started.append(c.start())
        return c

    yield start
    for c in started:
        c.stop(timeout=10)


def wait_for(predicate: Callable[[], Any], timeout: float, what: str,
             on_fail: Callable[[], str] | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    extra = on_fail() if on_fail else ""
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{extra}")


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    """The nudge window lives in the cache: start every test with none open."""
    from django.core.cache import caches

    caches["default"].clear()
    yield


@pytest.fixture(autouse=True)
def _journal_connections_closed() -> Iterator[None]:
    """A test that runs a locked claim outside a transaction (transaction=True) opened the
    claim journal's connection: closed after it, or dropping the test database would fail."""
    yield
    from integration_events import journal

    journal.close_connections()


@pytest.fixture(autouse=True)
def _no_heartbeat_thread_left() -> Iterator[None]:
    """A test that starts this process's heartbeat thread (post_spawn sent in-process) stops
    it: left running, it beats into the test database every HEARTBEAT_INTERVAL and a later
    test counting alive nodes sees one more, now and then."""
    import threading

    from integration_events.nodes import HeartbeatThread, stop_heartbeat

    yield
    left = [t for t in threading.enumerate() if isinstance(t, HeartbeatThread) and t.is_alive()]
    if left:
        stop_heartbeat()
        pytest.fail(f"the test left {len(left)} heartbeat thread(s) running: stop them "
                    "(integration_events.nodes.stop_heartbeat)")


@pytest.fixture
def otel() -> Iterator[Any]:
    """An OpenTelemetry SDK in memory (tests.otel_support.Telemetry), the instrumentation of
    INTEGRATION_EVENTS for the test, with MAX_ATTEMPTS 3."""
    from django.test import override_settings

    from tests import otel_support

    telemetry = otel_support.Telemetry()
    otel_support.CURRENT = telemetry.instrument
    try:
        with override_settings(INTEGRATION_EVENTS={
                "MAX_ATTEMPTS": 3, "INSTRUMENTATION": otel_support.INSTRUMENTATION}):
            yield telemetry
    finally:
        otel_support.CURRENT = None
