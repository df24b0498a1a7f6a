"""manage.py integration_events_consume: which bridges it consumes (and the errors that name
the configured ones), and the real command as a supervisor runs it: SIGTERM finishes the
batch, acknowledges what committed and exits 0; SIGKILL mid-stream loses nothing and a
restart stores each redelivered message once."""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings

from integration_events.bridges import parse_bridge
from integration_events.bridges.amqp_consumer import AmqpConsumer
from integration_events.models import PublishedMessage, WorkerNode
from tests.conftest import wait_for

from .helpers import cap_publish

LONELY = "probe.lonely-happened"  # declared, nobody subscribes: nothing else runs


def raw_bridge(url: str, unique: Callable[[str], str], **keys: Any) -> dict[str, Any]:
    return {"TRANSPORT": "amqp", "URL": url, "EXCHANGE": unique("ex"), "QUEUE": unique("q"),
            "RECEIVE": ["probe.#"], **keys}


def test_bridges_to_consume_are_chosen_and_mistakes_name_the_configured_ones() -> None:
    bridges = {
        "rx": {"TRANSPORT": "amqp", "URL": "amqp://h/", "QUEUE": "q", "RECEIVE": ["a.#"]},
        "tx": {"TRANSPORT": "amqp", "URL": "amqp://h/", "SEND": ["b.#"]},
    }
    with override_settings(INTEGRATION_EVENTS={**settings.INTEGRATION_EVENTS,
                                               "BRIDGES": bridges}):
        with pytest.raises(CommandError, match=r"Bridge 'nope' is not configured .*"
                                               r"Bridges with RECEIVE patterns: rx\."):
            call_command("integration_events_consume", "nope")
        with pytest.raises(CommandError, match="Bridge 'tx' has no RECEIVE patterns"):
            call_command("integration_events_consume", "tx")
        with pytest.raises(CommandError, match="--database 'other' is not one of"):
            call_command("integration_events_consume", "rx", database="other")
    with pytest.raises(CommandError, match="No bridge has RECEIVE patterns"):
        call_command("integration_events_consume")


def stored() -> int:
    return PublishedMessage.objects.exclude(origin="").count()


@pytest.mark.django_db(transaction=True)
def test_sigterm_finishes_the_batch_acknowledges_and_exits(
        url: str, unique: Callable[[str], str], peer: Any, process: Callable[..., Any]) -> None:
    raw = raw_bridge(url, unique)
    config = parse_bridge("rabbit", raw)
    with AmqpConsumer(config):
        pass  # the queue exists before the peer sends
    for n in range(2000):  # more than it stores before the SIGTERM below
        cap_publish(peer, config.exchange, f"7{n:04d}", topic=LONELY)
    consumer = process(["integration_events_consume", "rabbit"], {"rabbit": raw}, "consume")
    wait_for(lambda: stored() > 200, 60, "the consumer under way", consumer.log)
    consumer.signal(signal.SIGTERM)
    assert consumer.wait(30) == 0, consumer.log()
    first = stored()
    output = consumer.log()
    assert "SIGTERM: finishing the batch in hand, then stopping" in output
    assert f"bridge rabbit: stopped: {first} stored, 0 duplicates" in output
    node = WorkerNode.objects.get(name__startswith="consume:rabbit@")
    assert node.pid == consumer.proc.pid, "the consumer's own pid on the Nodes page"
    # What it stored it acknowledged: a second run stores the rest, and nothing twice.
    again = process(["integration_events_consume"], {"rabbit": raw}, "consume")
    wait_for(lambda: stored() == 2000, 60, "the rest", again.log)
    again.signal(signal.SIGTERM)
    assert again.wait(30) == 0
    assert 0 < first < 2000, first
    assert f"stopped: {2000 - first} stored, 0 duplicates" in again.log()


@pytest.mark.dbspecific
@pytest.mark.django_db(transaction=True)
def test_sigkill_mid_stream_loses_nothing_and_stores_redeliveries_once(
        url: str, unique: Callable[[str], str], peer: Any, process: Callable[..., Any]) -> None:
    raw = raw_bridge(url, unique)
    config = parse_bridge("rabbit", raw)
    with AmqpConsumer(config):
        pass
    for n in range(2000):
        cap_publish(peer, config.exchange, f"8{n:04d}", topic=LONELY)
    victim = process(["integration_events_consume"], {"rabbit": raw}, "consume")
    wait_for(lambda: stored() > 300, 60, "the consumer under way", victim.log)
    victim.kill()  # SIGKILL: up to PREFETCH deliveries were in its hands, unacknowledged
    survivor = process(["integration_events_consume"], {"rabbit": raw}, "consume")
    wait_for(lambda: stored() == 2000, 90, "every message", survivor.log)
    survivor.signal(signal.SIGTERM)
    assert survivor.wait(30) == 0
    wire_ids = list(PublishedMessage.objects.exclude(origin="").values_list("wire_id", flat=True))
    assert sorted(wire_ids) == [f"8{n:04d}" for n in range(2000)]
    assert int(peer.queue_declare(config.queue, passive=True).method.message_count) == 0
