"""The bridge end to end with the real processes: a `manage.py qcluster` sends through the
group bridge:<name>, `manage.py integration_events_consume` receives, and the other
service is a peer written with plain pika. Outages: every connection closed during 2,000
events (in CI), and a full broker restart (opt-in: IE_RELIABILITY_BROKER_RESTART=1, it
stops RabbitMQ for everyone on the machine)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from typing import Any

import pika
import pytest
from django.db import connection

from integration_events import publish_many
from integration_events.models import MessageStatus, PublishedMessage, ReceivedMessage
from integration_events.tasks import sweep
from tests.conftest import wait_for
from tests.eventapp.events import LonelyHappened, ProbeHappened
from tests.eventapp.models import Delivery as DeliveryRow

from .conftest import HOST, PORT, rabbitmqctl
from .helpers import cap_publish

pytestmark = [pytest.mark.cluster, pytest.mark.django_db(transaction=True)]

LONELY = LonelyHappened.topic


def peer_queue(channel: Any, exchange: str, queue: str, pattern: str,
               durable: bool = False) -> None:
    channel.exchange_declare(exchange, "topic", durable=True)
    channel.queue_declare(queue, durable=durable)
    channel.queue_bind(queue, exchange, pattern)


def take_all(url: str, queue: str, expect: int, timeout: float) -> list[str]:
    """The cap-msg-id of every message in ``queue`` (acknowledged), on a fresh connection
    (an outage drill closes the peer's too), until ``expect`` distinct ones arrived."""
    ids: list[str] = []
    deadline = time.monotonic() + timeout
    with pika.BlockingConnection(pika.URLParameters(url)) as connection:
        channel = connection.channel()
        for method, properties, _body in channel.consume(queue, inactivity_timeout=1.0):
            if method is not None:
                ids.append(properties.headers["cap-msg-id"])
                channel.basic_ack(method.delivery_tag)
            if len(set(ids)) >= expect or time.monotonic() > deadline:
                break
        channel.cancel()
    return ids


def test_our_events_reach_the_peer_and_its_messages_run_our_handlers_once(
        url: str, unique: Callable[[str], str], peer: Any, cluster: Callable[..., Any],
        process: Callable[..., Any]) -> None:
    out_exchange, in_exchange, their_queue = unique("ex"), unique("ex"), unique("theirs")
    peer_queue(peer, out_exchange, their_queue, ProbeHappened.topic)
    bridges = {
        "out": {"TRANSPORT": "amqp", "URL": url, "EXCHANGE": out_exchange,
                "SEND": [ProbeHappened.topic]},
        "in": {"TRANSPORT": "amqp", "URL": url, "EXCHANGE": in_exchange, "QUEUE": unique("q"),
               "RECEIVE": [ProbeHappened.topic]},
    }
    sender = cluster(IE_BRIDGES=json.dumps(bridges))
    receiver = process(["integration_events_consume", "in"], bridges, "consume")
    ours = publish_many([ProbeHappened(n=n) for n in range(50)])
    assert sorted(take_all(url, their_queue, 50, 60)) == sorted(str(m.pk) for m in ours)
    wait_for(lambda: "consuming queue" in receiver.log(), 30, "the consumer", receiver.log)
    for n in range(100, 130):
        cap_publish(peer, in_exchange, f"{n}", n=n)
    for n in range(100, 130, 3):
        cap_publish(peer, in_exchange, f"{n}", n=n)  # sent twice
    wanted = sorted([*range(50), *range(100, 130)] * 2)  # probe-a and probe-b, once each
    wait_for(lambda: DeliveryRow.objects.count() >= len(wanted), 60, "our handlers",
             lambda: sender.log() + receiver.log())
    assert sorted(DeliveryRow.objects.values_list("n", flat=True)) == wanted
    received = PublishedMessage.objects.filter(origin="in")
    assert received.count() == 30
    assert not ReceivedMessage.objects.filter(message__in=received, group="bridge:out").exists(), \
        "what came in over a bridge is not sent out again"
    receiver.signal(signal.SIGTERM)
    assert receiver.wait(30) == 0
    sender.kill()  # idle now: its graceful stop would add 2-3 s and assert nothing


@pytest.mark.skipif(connection.vendor != "postgresql", reason=(
    "a real cluster's locked claim killed again and again: the PostgreSQL run covers it "
    "(on MariaDB a locked claim is killed once, in-process, in tests/bridges/"
    "test_locked_sending.py::test_a_message_that_kills_its_worker_every_time_ends_dead_lettered;"
    " SQLite's leases: tests/test_cluster.py::test_handler_that_kills_its_worker_ends_up_failed)"))
def test_a_message_that_kills_its_sending_worker_every_time_ends_dead_lettered(
        url: str, unique: Callable[[str], str], peer: Any, cluster: Callable[..., Any]) -> None:
    """Guarantee 3 through a bridge with a real qcluster: the batch holding the poison kills
    its worker after publishing, before its locked claim commits; the sweep settles the
    claim's journal row. Its neighbours are sent
    (again, same ids) and succeed; the poison is claimed alone and ends failed by age.
    Without the claim journal it would be sent forever (the wait below times out)."""
    from .faults import POISON

    exchange, queue = unique("ex"), unique("theirs")
    peer_queue(peer, exchange, queue, LONELY, durable=True)
    bridges = {"out": {"TRANSPORT": "amqp", "URL": url, "EXCHANGE": exchange,
                       "SEND": [LONELY], "FAIL_AFTER": 5}}
    sender = cluster(IE_BRIDGES=json.dumps(bridges), IE_LEASE_SECONDS="2",
                     IE_INSTRUMENTATION="tests.bridges.faults.KillOnPoison")
    ours = publish_many([LonelyHappened(n=n) for n in range(30)])
    rows = ReceivedMessage.objects.filter(group="bridge:out")
    finished = (MessageStatus.SUCCEEDED, MessageStatus.FAILED)

    def settled() -> bool:
        sweep()  # the minute sweep, run now
        return rows.filter(status__in=finished).count() == 30

    wait_for(settled, 120, "the poison to be dead-lettered and the rest sent", sender.log)
    poison = str(ours[POISON].pk)
    dead = rows.get(status=MessageStatus.FAILED)
    assert str(dead.message_id) == poison
    assert dead.error_type == "LeaseExpired" and dead.attempts >= 1
    assert "died before it committed" in dead.last_error
    assert rows.filter(status=MessageStatus.SUCCEEDED).count() == 29
    got = set(take_all(url, queue, 30, 30))
    assert got >= {str(m.pk) for m in ours} - {poison}, "every other message reached the peer"
    sender.kill()  # its graceful stop after the killed workers is not what this is about


def outage_run(url: str, unique: Callable[[str], str], peer: Any, cluster: Callable[..., Any],
               outage: Callable[[Callable[[], bool]], None], count: int = 2000) -> str:
    """``count`` events through a real qcluster while ``outage(sending)`` happens: every one
    reaches the peer (once after de-duplication on cap-msg-id) and no row is dead-lettered.
    Returns the cluster's log."""
    exchange, queue = unique("ex"), unique("theirs")
    peer_queue(peer, exchange, queue, LONELY, durable=True)
    bridges = {"out": {"TRANSPORT": "amqp", "URL": url, "EXCHANGE": exchange,
                       "SEND": [LONELY], "BATCH_SIZE": 20, "CONFIRM_TIMEOUT": 5}}
    sender = cluster(IE_BRIDGES=json.dumps(bridges))
    ours = publish_many([LonelyHappened(n=n) for n in range(count)])
    done = ReceivedMessage.objects.filter(group="bridge:out", status=MessageStatus.SUCCEEDED)
    wait_for(lambda: done.count() > 0, 60, "sending under way", sender.log)
    outage(lambda: done.count() < count)
    wait_for(lambda: done.count() == count, 240, "every row sent", sender.log)
    assert not ReceivedMessage.objects.filter(status=MessageStatus.FAILED).exists()
    ids = take_all(url, queue, count, 60)
    assert set(ids) == {str(m.pk) for m in ours}, "every message reached the peer"
    print(f"\n{count} events, {len(ids) - count} duplicates at the peer (de-duplicated by id)")
    sender.kill()  # idle now: its graceful stop would add 2-3 s and assert nothing
    return sender.log_path.read_text(errors="replace")


@pytest.mark.skipif(connection.vendor == "mysql",
                    reason="a broker outage: the PostgreSQL run covers locked claims and the "
                           "SQLite run leased ones")
def test_every_connection_closed_during_2000_events_loses_and_fails_nothing(
        url: str, unique: Callable[[str], str], peer: Any, cluster: Callable[..., Any],
        vhost: str) -> None:
    def close_all_while(sending: Callable[[], bool]) -> None:
        for _ in range(3):
            if not sending():
                break
            rabbitmqctl("close_all_connections", "-p", vhost, "outage drill")

    log = outage_run(url, unique, peer, cluster, close_all_while)
    assert log.count("role=publisher") >= 2, "the drill hit the sender: it connected again"


@pytest.mark.skipif(os.environ.get("IE_RELIABILITY_BROKER_RESTART") != "1",
                    reason="stops RabbitMQ for the whole machine: set "
                           "IE_RELIABILITY_BROKER_RESTART=1")
@pytest.mark.skipif(connection.vendor != "sqlite",
                    reason="a broker outage, whatever the database: the SQLite run covers it")
def test_a_broker_restart_during_2000_events_loses_and_fails_nothing(
        url: str, unique: Callable[[str], str], peer: Any, cluster: Callable[..., Any]) -> None:
    def restart(sending: Callable[[], bool]) -> None:
        rabbitmqctl("stop_app")
        time.sleep(3)
        rabbitmqctl("start_app")
        deadline = time.monotonic() + 60
        while subprocess.run(["rabbitmqctl", "await_startup"], capture_output=True,
                             timeout=70).returncode != 0:
            assert time.monotonic() < deadline, "RabbitMQ did not come back"
        wait_for(lambda: _port_open(), 60, "RabbitMQ's port")

    log = outage_run(url, unique, peer, cluster, restart)
    assert "bridge unavailable" in log and "group backing off" in log


def _port_open() -> bool:
    import socket

    try:
        socket.create_connection((HOST, PORT), timeout=1).close()
    except OSError:
        return False
    return True
