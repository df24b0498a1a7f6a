"""A private RabbitMQ virtual host per test session, and a plain-pika peer.

Everything the bridge tests declare lives in a virtual host named iet-<random> that is
deleted at the end, so nothing leaks into the broker other projects share, and
``rabbitmqctl close_all_connections --vhost`` closes only this session's connections.
"""

from __future__ import annotations

import contextlib
import importlib.util
import shutil
import socket
import subprocess
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from types import SimpleNamespace
from typing import Any

import pytest

# The tests that talk to the broker need the [amqp] extra (pika); the codec, settings and
# storing tests do not.
NEEDS_PIKA = ["test_amqp*.py", "test_frames.py", "test_sending.py", "test_locked_sending.py",
              "test_senders.py", "test_consuming.py", "test_consume_command.py", "test_cluster.py",
              "test_two_services.py"]
collect_ignore_glob = [] if importlib.util.find_spec("pika") else NEEDS_PIKA

HOST, PORT = "127.0.0.1", 5672


def rabbitmqctl(*args: str) -> str:
    done = subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {done.stderr or done.stdout}")
    return done.stdout


def _broker_reachable() -> bool:
    try:
        socket.create_connection((HOST, PORT), timeout=2).close()
    except OSError:
        return False
    return shutil.which("rabbitmqctl") is not None


@pytest.fixture(scope="session")
def vhost() -> Iterator[str]:
    if not _broker_reachable():
        pytest.skip(f"no RabbitMQ at {HOST}:{PORT} (or no rabbitmqctl); start it to run these")
    name = f"iet-{uuid.uuid4().hex[:10]}"
    rabbitmqctl("add_vhost", name)
    rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    yield name
    rabbitmqctl("delete_vhost", name)


@pytest.fixture
def url(vhost: str) -> str:
    return f"amqp://guest:guest@{HOST}:{PORT}/{vhost}"


@pytest.fixture
def unique() -> Callable[[str], str]:
    """unique("ex") -> "iet-ex-3f2a9c": names no other test uses."""
    return lambda prefix: f"iet-{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def bridge(url: str, unique: Callable[[str], str]) -> Callable[..., Any]:
    """bridge(SEND=[...], RECEIVE=[...], ...) -> a BridgeConfig on the private vhost with
    its own exchange and queue."""
    from integration_events.bridges import parse_bridge

    def make(**keys: Any) -> Any:
        entry = {"TRANSPORT": "amqp", "URL": url, "EXCHANGE": unique("ex"),
                 "QUEUE": unique("q"), **keys}
        return parse_bridge(unique("b"), entry)

    return make


@pytest.fixture
def peer(vhost: str) -> Iterator[Any]:
    """A plain pika channel on the private vhost: the other service, written without the
    project's transport code."""
    import pika

    params = pika.ConnectionParameters(HOST, PORT, vhost,
                                       pika.PlainCredentials("guest", "guest"))
    connection = pika.BlockingConnection(params)
    channel = connection.channel()
    yield channel
    if connection.is_open:
        # An outage drill may have closed it meanwhile.
        with contextlib.suppress(pika.exceptions.AMQPError):
            connection.close()


def drain(channel: Any, queue: str, *, expect: int, timeout: float = 5.0) -> list[Any]:
    """Every message of ``queue`` (auto-acked) until ``expect`` arrived or ``timeout``."""
    got = []
    for method, properties, body in channel.consume(queue, auto_ack=True,
                                                    inactivity_timeout=timeout):
        if method is None:
            break
        got.append((method, properties, body))
        if len(got) >= expect:
            break
    channel.cancel()
    return got


@pytest.fixture
def bridged(url: str, unique: Callable[[str], str], peer: Any) -> Iterator[Callable[..., Any]]:
    """bridged(name, bind=[patterns], **keys): a bridge in INTEGRATION_EVENTS for this test,
    and the peer's queue bound to its exchange with ``bind`` (the receiving service)."""
    from django.conf import settings
    from django.test import override_settings

    from integration_events.bridging import resolver
    from tests.eventapp.events import ProbeHappened

    stack = ExitStack()
    bridges: dict[str, Any] = {}

    def make(name: str = "out", bind: tuple[str, ...] = ("probe.#",), url_: str | None = None,
             **keys: Any) -> Any:
        exchange, queue = unique("ex"), unique("peer")
        peer.exchange_declare(exchange, "topic", durable=True)
        peer.queue_declare(queue)
        for pattern in bind:
            peer.queue_bind(queue, exchange, pattern)
        bridges[name] = {"TRANSPORT": "amqp", "URL": url_ or url, "EXCHANGE": exchange,
                         "SEND": [ProbeHappened.topic], **keys}
        stack.enter_context(override_settings(INTEGRATION_EVENTS={
            **settings.INTEGRATION_EVENTS, "BRIDGES": dict(bridges)}))
        return SimpleNamespace(name=name, exchange=exchange, queue=queue,
                               group=f"bridge:{name}")

    yield make
    resolver.close()
    stack.close()


@pytest.fixture
def cap_events() -> Iterator[dict[str, Any]]:
    """The test event classes of tests/bridges/cap_events.py, by topic."""
    from .cap_events import defined

    yield from defined()


class Process:
    """A `manage.py <command>` subprocess on the test database (like tests.conftest.Cluster),
    with the bridges given as IE_BRIDGES."""

    def __init__(self, args: list[str], bridges: dict[str, Any], log_name: str,
                 env: dict[str, str] | None = None) -> None:
        import json
        import os
        import sys
        from pathlib import Path

        from tests.conftest import ROOT, Cluster

        self.args = [sys.executable, str(ROOT / "manage.py"), *args]
        base = Cluster().env()
        self.env = {**base, "IE_BRIDGES": json.dumps(bridges), **(env or {})}
        self.log_path = Path(os.environ.get("IE_VAR_DIR", ROOT / "var")) / f"{log_name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.root = ROOT

    def start(self) -> Process:
        log = open(self.log_path, "wb")  # noqa: SIM115 - kept open for the process's life
        self.proc = subprocess.Popen(self.args, cwd=self.root, env=self.env, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        import os
        import signal

        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-8000:]
        except FileNotFoundError:
            return ""


@pytest.fixture
def process() -> Iterator[Callable[..., Process]]:
    """process(args, bridges, name): start a manage.py subprocess; killed at the end."""
    started: list[Process] = []

    def start(args: list[str], bridges: dict[str, Any], name: str, **env: str) -> Process:
        started.append(Process(args, bridges, f"{name}-{len(started)}", env).start())
        return started[-1]

    yield start
    for p in started:
        p.kill()


# --- a database that refuses some rows (a real trigger, no mock) ---------------------------

REFUSE = {
    "sqlite": ("CREATE TRIGGER ie_refuse BEFORE INSERT ON integration_events_publishedmessage "
               "WHEN {condition} BEGIN SELECT RAISE(ABORT, 'refused by a test trigger'); END",
               "DROP TRIGGER ie_refuse"),
    "postgresql": (
        "CREATE FUNCTION ie_refuse() RETURNS trigger AS $$ BEGIN IF {condition} THEN RAISE "
        "EXCEPTION 'refused by a test trigger' USING ERRCODE = '22000'; END IF; RETURN NEW; "
        "END $$ LANGUAGE plpgsql; CREATE TRIGGER ie_refuse BEFORE INSERT ON "
        "integration_events_publishedmessage FOR EACH ROW EXECUTE FUNCTION ie_refuse()",
        "DROP TRIGGER ie_refuse ON integration_events_publishedmessage; "
        "DROP FUNCTION ie_refuse()"),
}
CONDITIONS = {  # headers that only the real message has / a topic the substitute keeps
    "sqlite": {"headers": "NEW.headers LIKE '%refuse-me%'",
               "topic": "NEW.topic = 'probe.refused'"},
    "postgresql": {"headers": "NEW.headers::text LIKE '%refuse-me%'",
                   "topic": "NEW.topic = 'probe.refused'"},
}


@pytest.fixture
def refuse() -> Iterator[Any]:
    """refuse("headers" | "topic"): a real trigger makes the database refuse some rows."""
    from django.db import connection

    if connection.vendor not in REFUSE:
        pytest.skip(f"no refusing trigger written for {connection.vendor}")
    create, drop = REFUSE[connection.vendor]
    made: list[str] = []

    def make(which: str) -> None:
        with connection.cursor() as cursor:
            cursor.execute(create.format(condition=CONDITIONS[connection.vendor][which]))
        made.append(which)

    yield make
    if made:
        with connection.cursor() as cursor:
            for statement in drop.split("; "):
                cursor.execute(statement)
