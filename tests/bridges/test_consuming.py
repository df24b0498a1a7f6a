"""integration_events.bridging.consuming: the consume loop against a real RabbitMQ and the
real database. A peer written with plain pika sends CAP-format messages (some twice, some
poison); each is stored once and run by the local subscribers once; what was stored but not
acknowledged is stored once when the broker delivers it again; the broker or the database
going away is waited out."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pika
import pytest
from django.db import connection, connections

from integration_events.bridges import parse_bridge
from integration_events.bridges.amqp_consumer import AmqpConsumer
from integration_events.bridging.consuming import BridgeConsumer
from integration_events.bridging.receiving import store_batch
from integration_events.models import MessageStatus, PublishedMessage, WorkerNode
from integration_events.worker import Worker
from tests.conftest import wait_for
from tests.eventapp.models import Delivery as DeliveryRow

from .conftest import rabbitmqctl
from .helpers import POISON, POISON_MAX_BODY, cap_publish

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def receiving(url: str, unique: Callable[[str], str], peer: Any) -> Callable[..., Any]:
    """receiving(**keys): a bridge that receives probe.# on a queue of its own (declared
    now, as the consumer would), and its exchange declared for the peer."""

    def make(**keys: Any) -> Any:
        config = parse_bridge(unique("rx"), {
            "TRANSPORT": "amqp", "URL": url, "EXCHANGE": unique("ex"), "QUEUE": unique("q"),
            "RECEIVE": ["probe.#"], **keys})
        with AmqpConsumer(config):  # declares the exchange, queue and binding
            return config

    return make


class Running:
    """A BridgeConsumer in a thread (the command runs the same loop in its main thread)."""

    def __init__(self, config: Any) -> None:
        self.lines: list[str] = []
        self.consumer = BridgeConsumer(config, report=lambda line, warning: self.lines.append(
            line))
        self.thread = threading.Thread(target=self._run)
        self.error: BaseException | None = None
        self.thread.start()

    def _run(self) -> None:
        try:
            self.consumer.run()
        except BaseException as exc:
            self.error = exc
        finally:
            connections.close_all()

    def stop(self) -> Any:
        self.consumer.stop.set()
        self.thread.join(30)
        assert not self.thread.is_alive() and self.error is None, self.error
        return self.consumer.totals


@pytest.fixture
def consume() -> Iterator[Callable[[Any], Running]]:
    started: list[Running] = []

    def start(config: Any) -> Running:
        started.append(Running(config))
        return started[-1]

    yield start
    for running in started:
        running.consumer.stop.set()
        running.thread.join(30)


def stored(**filters: Any) -> int:
    return PublishedMessage.objects.exclude(origin="").filter(**filters).count()


def queue_depth(peer: Any, queue: str) -> int:
    return int(peer.queue_declare(queue, passive=True).method.message_count)


def test_caps_messages_some_sent_twice_are_stored_once_and_handled_once(
        receiving: Callable[..., Any], peer: Any, consume: Callable[[Any], Running]) -> None:
    config = receiving()
    running = consume(config)
    for n in range(30):
        cap_publish(peer, config.exchange, f"20{n:02d}", n=n)
    for n in range(0, 30, 3):  # CAP retried these
        cap_publish(peer, config.exchange, f"20{n:02d}", n=n)
    wait_for(lambda: running.consumer.totals.stored + running.consumer.totals.duplicates >= 40,
             20, "40 deliveries")
    totals = running.stop()
    assert (totals.stored, totals.duplicates) == (30, 10)
    assert queue_depth(peer, config.queue) == 0, "every delivery acknowledged"
    Worker(keep_leases=False).run_until_idle()
    assert sorted(DeliveryRow.objects.values_list("n", flat=True)) == sorted(
        list(range(30)) * 2), "each message once per group (probe-a, probe-b)"
    assert any("consuming queue" in line for line in running.lines)
    node = WorkerNode.objects.get(name=running.consumer.node)
    assert node.name.startswith(f"consume:{config.name}@") and node.pid == os.getpid()


def test_poison_between_good_messages_is_stored_failed_and_the_consumer_goes_on(
        receiving: Callable[..., Any], peer: Any, consume: Callable[[Any], Running]) -> None:
    config = receiving(MAX_BODY_BYTES=POISON_MAX_BODY)
    running = consume(config)
    for index, (_reason, kwargs) in enumerate(POISON):
        cap_publish(peer, config.exchange, f"30{index}0", n=index)
        wire_id = kwargs.get("headers", {}).get("cap-msg-id", f"30{index}1")
        headers = {k: v for k, v in kwargs.get("headers", {}).items() if k != "cap-msg-id"}
        properties = {k: v for k, v in kwargs.items() if k not in ("headers", "body")}
        cap_publish(peer, config.exchange, wire_id, body=kwargs.get("body"), headers=headers,
                    **properties)
    cap_publish(peer, config.exchange, "3999", n=99)
    wait_for(lambda: stored() >= 2 * len(POISON) + 1, 20, "every delivery stored")
    assert running.thread.is_alive(), "alive after every kind of poison"
    running.stop()
    assert queue_depth(peer, config.queue) == 0
    failed = PublishedMessage.objects.filter(status=MessageStatus.FAILED)
    assert sorted(m.headers["bridge-rejected"] for m in failed) == sorted(r for r, _ in POISON)
    assert all(m.error_type == "WireRejected" and m.origin == config.name for m in failed)
    Worker(keep_leases=False).run_until_idle()
    assert sorted(set(DeliveryRow.objects.values_list("n", flat=True))) == [
        *range(len(POISON)), 99]


def test_stored_but_not_acknowledged_is_stored_once_when_delivered_again(
        receiving: Callable[..., Any], peer: Any, consume: Callable[[Any], Running]) -> None:
    """A consumer that dies between its commit and its ack: the broker delivers the batch
    again (redelivered=True), and it is not stored twice."""
    config = receiving()
    for n in range(10):
        cap_publish(peer, config.exchange, f"40{n:02d}", n=n)
    dying = AmqpConsumer(config)
    dying.connect()
    batch = wait_for(lambda: dying.fetch(max_messages=10, max_wait=0.5), 10, "a batch")
    assert store_batch(batch, config, "default").stored == len(batch)
    dying.close()  # no ack: as if the process had been killed here
    running = consume(config)
    wait_for(lambda: running.consumer.totals.duplicates >= len(batch), 20, "the redelivery")
    wait_for(lambda: stored() == 10, 20, "the rest")
    totals = running.stop()
    assert totals.duplicates == len(batch) and stored() == 10
    assert queue_depth(peer, config.queue) == 0


def test_the_broker_dropping_the_connection_is_waited_out(
        receiving: Callable[..., Any], peer: Any, consume: Callable[[Any], Running],
        vhost: str, url: str) -> None:
    config = receiving()
    running = consume(config)
    cap_publish(peer, config.exchange, "5000")
    wait_for(lambda: stored() == 1, 10, "the first message")
    rabbitmqctl("close_all_connections", "-p", vhost, "test: the broker dropped us")
    with pika.BlockingConnection(pika.URLParameters(url)) as again:
        channel = again.channel()
        for n in range(1, 20):
            cap_publish(channel, config.exchange, f"50{n:02d}", n=n)
    wait_for(lambda: stored() == 20, 30, "the messages sent after the drop",
             lambda: "\n".join(running.lines))
    running.stop()
    assert any("lost the broker" in line and "retrying in" in line for line in running.lines)
    assert any("connected to the broker again" in line for line in running.lines)


def test_a_database_connection_killed_under_it_is_reconnected(
        receiving: Callable[..., Any], peer: Any, consume: Callable[[Any], Running]) -> None:
    """PostgreSQL: every connection but ours is terminated again and again while messages
    arrive; nothing is acknowledged before it is stored, and everything is stored once."""
    if connection.vendor != "postgresql":
        pytest.skip("terminates server connections (pg_terminate_backend): PostgreSQL only")
    config = receiving()
    running = consume(config)
    for round_ in range(5):
        for n in range(20):
            cap_publish(peer, config.exchange, f"6{round_}{n:02d}", n=n)
        time.sleep(0.05)
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                           "datname = current_database() AND pid <> pg_backend_pid()")
    wait_for(lambda: stored() == 100, 60, "every message", lambda: "\n".join(running.lines))
    running.stop()
    assert queue_depth(peer, config.queue) == 0
    assert PublishedMessage.objects.filter(status=MessageStatus.FAILED).count() == 0


def test_a_batch_is_at_most_100_messages_or_what_came_within_50_ms(
        receiving: Callable[..., Any], peer: Any, consume: Callable[[Any], Running],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from integration_events.bridging import consuming

    sizes: list[int] = []

    def counted(batch: Any, *args: Any) -> Any:
        sizes.append(len(batch))
        return store_batch(batch, *args)

    monkeypatch.setattr(consuming, "store_batch", counted)
    config = receiving()
    for n in range(250):  # waiting before the consumer starts: batches of 100
        cap_publish(peer, config.exchange, f"66{n:03d}", n=n)
    running = consume(config)
    wait_for(lambda: stored() == 250, 30, "250 messages", lambda: "\n".join(running.lines))
    # (Batches of 100 as a rule; a slow machine may cut one at 50 ms before it is full.)
    assert sum(sizes) == 250 and max(sizes) == 100 and len(sizes) <= 5, sizes
    for n in range(4):  # one every 300 ms: a batch each, none waits for more
        cap_publish(peer, config.exchange, f"67{n:03d}", n=n)
        wait_for(lambda n=n: stored() == 251 + n, 5, f"message {n}")
        time.sleep(0.3)
    running.stop()
    assert sizes[-4:] == [1, 1, 1, 1] and sum(sizes) == 254, sizes


def test_a_database_that_does_not_answer_gets_nothing_acknowledged_until_it_is_back(
        receiving: Callable[..., Any], peer: Any, consume: Callable[[Any], Running]) -> None:
    """PostgreSQL: the test database refuses every new connection (ALLOW_CONNECTIONS false)
    and the consumer's is terminated, while messages arrive: the consumer acknowledges
    nothing (the broker keeps every message), waits until the database answers, and then
    stores everything once."""
    if connection.vendor != "postgresql":
        pytest.skip("refuses connections (ALTER DATABASE ... ALLOW_CONNECTIONS): PostgreSQL only")
    config = receiving()
    running = consume(config)
    wait_for(lambda: any("consuming queue" in line for line in running.lines), 20,
             "the consumer to start")
    database = connection.settings_dict["NAME"]
    with connection.cursor() as cursor:  # the test's own session stays, to look
        cursor.execute("SELECT pg_backend_pid()")
        (mine,) = cursor.fetchone()

    def allow(yes: bool) -> None:
        # From the server's maintenance database: a database cannot refuse its own session.
        with connection._nodb_cursor() as cursor:
            cursor.execute(f"ALTER DATABASE {connection.ops.quote_name(database)} "
                           f"ALLOW_CONNECTIONS {'true' if yes else 'false'}")
            if not yes:
                cursor.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                               "WHERE datname = %s AND pid <> %s", [database, mine])

    try:
        allow(False)
        for n in range(30):
            cap_publish(peer, config.exchange, f"65{n:02d}", n=n)
        wait_for(lambda: any("still does not answer" in line for line in running.lines), 30,
                 "the consumer to find the database down", lambda: "\n".join(running.lines))
        # Nothing was acknowledged: the broker holds all 30 again (closing the channel gave
        # the unacknowledged batch back).
        wait_for(lambda: queue_depth(peer, config.queue) == 30, 10, "30 messages in the queue")
        assert stored() == 0
    finally:
        allow(True)
    wait_for(lambda: stored() == 30, 60, "every message", lambda: "\n".join(running.lines))
    totals = running.stop()
    assert any("the database answers again" in line for line in running.lines)
    assert queue_depth(peer, config.queue) == 0 and totals.stored == 30


def test_a_message_the_database_refuses_goes_to_the_dead_letter_exchange(
        receiving: Callable[..., Any], peer: Any, consume: Callable[[Any], Running],
        unique: Callable[[str], str], refuse: Any) -> None:
    """Refused even as a failed message (a trigger on its topic): nacked without requeue,
    so the queue's dead-letter exchange gets it, and the messages around it are stored and
    acknowledged (the refused one last in its batch, too)."""
    refuse("topic")
    dlx, parked = unique("dlx"), unique("parked")
    peer.exchange_declare(dlx, "fanout", durable=True)
    peer.queue_declare(parked)
    peer.queue_bind(parked, dlx)
    config = receiving(DEAD_LETTER_EXCHANGE=dlx)
    cap_publish(peer, config.exchange, "8001", n=1)
    cap_publish(peer, config.exchange, "8002", topic="probe.refused")
    running = consume(config)
    wait_for(lambda: queue_depth(peer, parked) == 1, 20, "the dead letter",
             lambda: "\n".join(running.lines))
    cap_publish(peer, config.exchange, "8003", n=3)
    wait_for(lambda: stored() == 2, 20, "the messages around it")
    assert running.thread.is_alive()
    totals = running.stop()
    assert totals.dead_lettered == 1 and queue_depth(peer, config.queue) == 0
    # Acknowledging the nacked tag would close the channel: a reconnect and a redelivery.
    assert totals.duplicates == 0 and not any("lost the broker" in x for x in running.lines)
    method, properties, _ = peer.basic_get(parked, auto_ack=True)
    assert properties.headers["cap-msg-id"] == "8002"


def test_a_stop_while_idle_ends_the_loop_without_waiting_out_the_idle_fetch(
        receiving: Callable[..., Any], peer: Any, consume: Callable[[Any], Running]) -> None:
    """SIGTERM (the stop flag) while no message comes: the idle fetch, which waits IDLE_WAIT
    (1 s) for a first message, looks at the flag every STOP_CHECK (0.1 s)."""
    from integration_events.bridges.amqp_consumer import STOP_CHECK
    from integration_events.bridging.consuming import IDLE_WAIT

    config = receiving()
    running = consume(config)
    cap_publish(peer, config.exchange, "9001", n=1)
    wait_for(lambda: stored() == 1, 20, "the first message")
    time.sleep(0.2)  # in the idle fetch now
    started = time.monotonic()
    running.stop()
    took = time.monotonic() - started
    assert took < STOP_CHECK + (IDLE_WAIT - STOP_CHECK) / 2, f"the stop took {took:.2f} s"
