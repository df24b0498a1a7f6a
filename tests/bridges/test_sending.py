"""integration_events.bridging.sending: the group bridge:<name> sends the messages matching
SEND in CAP's format, with confirms; unroutable messages are failed attempts, a broker that
is gone backs the group off without spending attempts, rows fail by age, and received
messages are only sent on when configured. In-process workers, a real RabbitMQ, and a peer
written with plain pika."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pika
import pytest
from django.conf import settings
from django.db.models.functions import Now
from django.test import override_settings
from django.utils import timezone

from integration_events import publish, publish_many
from integration_events.bridges import parse_bridge
from integration_events.bridging import resolver
from integration_events.bridging.receiving import store_batch
from integration_events.models import GroupState, MessageStatus, PublishedMessage, ReceivedMessage
from integration_events.registry import get_subscription
from integration_events.worker import Worker
from tests.eventapp.events import LonelyHappened, ProbeHappened

from .conftest import HOST, PORT, drain, rabbitmqctl
from .helpers import cap_delivery

pytestmark = pytest.mark.django_db
PROBE = ProbeHappened.topic
TRACEPARENT = "00-" + "c" * 32 + "-" + "d" * 16 + "-01"


def run() -> Any:
    return Worker(keep_leases=False).run_until_idle()


def row(group: str, message: Any) -> ReceivedMessage:
    return ReceivedMessage.objects.get(group=group, message_id=message.pk)


def test_matching_messages_go_out_in_caps_format_with_their_own_headers(
        bridged: Callable[..., Any], peer: Any) -> None:
    out = bridged()
    message = publish(ProbeHappened(n=7, text="käse"),
                      headers={"traceparent": TRACEPARENT, "tracestate": "ours=1"})
    lonely = publish(LonelyHappened(n=1))  # SEND names only the probe topic
    run()
    (got,) = drain(peer, out.queue, expect=1)
    method, properties, body = got
    headers = properties.headers
    assert method.routing_key == PROBE and properties.delivery_mode == 2
    assert properties.content_type == "application/json"
    assert json.loads(body) == {"N": 7, "Behaviour": "ok", "OnlyGroup": "", "Text": "käse"}
    assert {k: headers[k] for k in ("cap-msg-id", "cap-msg-name", "cap-msg-type", "cap-corr-id",
                                     "cap-corr-seq")} == {
        "cap-msg-id": str(message.pk), "cap-msg-name": PROBE, "cap-msg-type": "ProbeHappened",
        "cap-corr-id": str(message.correlation_id), "cap-corr-seq": "0"}
    assert re.fullmatch(r"\d\d/\d\d/\d{4} \d\d:\d\d:\d\d \+00:00", headers["cap-senttime"])
    assert (headers["traceparent"], headers["tracestate"]) == (TRACEPARENT, "ours=1")
    sent = row(out.group, message)
    assert (sent.status, sent.attempts) == (MessageStatus.SUCCEEDED, 1)
    assert sent.handler == "integration_events.bridging.sending.BridgeSender.send_batch"
    assert not ReceivedMessage.objects.filter(message_id=lonely.pk, group=out.group).exists()


def test_a_backlog_goes_out_in_confirmed_batches(bridged: Callable[..., Any], peer: Any) -> None:
    out = bridged(BATCH_SIZE=40)
    messages = publish_many([ProbeHappened(n=n) for n in range(150)])
    run()
    got = drain(peer, out.queue, expect=150)
    assert sorted(p.headers["cap-msg-id"] for _, p, _ in got) == sorted(str(m.pk) for m in messages)
    assert ReceivedMessage.objects.filter(group=out.group, status=MessageStatus.SUCCEEDED
                                          ).count() == 150


def test_an_unroutable_message_is_a_failed_attempt_that_names_the_fix(
        bridged: Callable[..., Any]) -> None:
    out = bridged(bind=())  # nobody binds a queue for the topic
    message = publish(ProbeHappened(n=1))
    run()
    sent = row(out.group, message)
    assert (sent.status, sent.attempts, sent.error_type) == (MessageStatus.RETRYING, 1,
                                                             "SendFailed")
    assert "returned 312 NO_ROUTE" in sent.last_error and "Bind a queue" in sent.last_error
    assert not GroupState.objects.filter(group=out.group).exists(), "the broker is fine"


def test_rows_fail_by_age_not_by_count(bridged: Callable[..., Any]) -> None:
    out = bridged(bind=(), FAIL_AFTER=60)
    young, old = publish(ProbeHappened(n=1)), publish(ProbeHappened(n=2))
    PublishedMessage.objects.filter(pk=old.pk).update(created_at=Now() - timedelta(minutes=5))
    run()
    ReceivedMessage.objects.filter(message_id=old.pk).update(
        created_at=timezone.now() - timedelta(minutes=5))
    ReceivedMessage.objects.filter(group=out.group).update(next_attempt_at=Now())
    run()
    assert row(out.group, young).status == MessageStatus.RETRYING
    failed = row(out.group, old)
    assert failed.status == MessageStatus.FAILED and failed.attempts == 2
    sub = get_subscription(PROBE, out.group)
    assert sub is not None and sub.retry.max_age == 60 and sub.retry.max_attempts == 1000


def test_content_over_max_body_bytes_fails_at_once(bridged: Callable[..., Any]) -> None:
    out = bridged(MAX_BODY_BYTES=50)
    message = publish(ProbeHappened(n=1, text="x" * 100))
    run()
    sent = row(out.group, message)
    assert (sent.status, sent.error_type) == (MessageStatus.FAILED, "WireEncodingError")


def test_a_broker_that_is_gone_backs_the_group_off_without_spending_attempts(
        bridged: Callable[..., Any], unique: Callable[[str], str]) -> None:
    vhost = unique("later")  # does not exist yet: the broker refuses the connection
    out = bridged(url_=f"amqp://guest:guest@{HOST}:{PORT}/{vhost}")
    message = publish(ProbeHappened(n=1))
    run()
    waiting = row(out.group, message)
    assert (waiting.status, waiting.attempts, waiting.last_error) == (
        MessageStatus.RETRYING, 0, "")
    state = GroupState.objects.get(group=out.group)
    assert state.backoffs == 1 and "cannot connect" in state.reason
    assert run().total == 0, "held back: not claimed while the group backs off"
    rabbitmqctl("add_vhost", vhost)
    try:
        rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        connection = pika.BlockingConnection(pika.ConnectionParameters(
            HOST, PORT, vhost, pika.PlainCredentials("guest", "guest")))
        channel = connection.channel()
        channel.exchange_declare(out.exchange, "topic", durable=True)
        channel.queue_declare("peer")
        channel.queue_bind("peer", out.exchange, "probe.#")
        GroupState.objects.filter(group=out.group).update(backoff_until=Now())
        run()
        waiting.refresh_from_db()
        assert (waiting.status, waiting.attempts) == (MessageStatus.SUCCEEDED, 1)
        assert len(drain(channel, "peer", expect=1)) == 1
        connection.close()
    finally:
        resolver.close()
        rabbitmqctl("delete_vhost", vhost)


def test_a_connection_closed_while_idle_is_opened_again_without_backing_off(
        bridged: Callable[..., Any], vhost: str, url: str) -> None:
    out = bridged()
    publish(ProbeHappened(n=1))
    run()
    rabbitmqctl("close_all_connections", "-p", vhost, "test: the broker dropped us")
    second = publish(ProbeHappened(n=2))
    run()
    assert row(out.group, second).status == MessageStatus.SUCCEEDED
    assert not GroupState.objects.filter(group=out.group).exists()
    with pika.BlockingConnection(pika.URLParameters(url)) as connection:
        assert len(drain(connection.channel(), out.queue, expect=2)) == 2


def received(wire_id: str, **headers: str) -> PublishedMessage:
    config = parse_bridge("rx", {"TRANSPORT": "amqp", "URL": "amqp://h/", "QUEUE": "rx.v1",
                                 "RECEIVE": ["other.#"]})
    store_batch([cap_delivery(wire_id, n=5, headers=headers)], config, "default")
    return PublishedMessage.objects.get(origin="rx", wire_id=wire_id)


def test_a_received_message_is_not_sent_out_again_unless_forwarding(
        bridged: Callable[..., Any], peer: Any) -> None:
    quiet = bridged("quiet")
    message = received("9001")
    run()
    assert not ReceivedMessage.objects.filter(message=message, group=quiet.group).exists()
    assert ReceivedMessage.objects.filter(message=message, group="probe-a").exists()
    forward = bridged("forward", FORWARD_RECEIVED=True)
    again = received("9002", **{"cap-corr-id": "77", "cap-corr-seq": "3"})
    run()
    assert not ReceivedMessage.objects.filter(message=again, group=quiet.group).exists()
    (got,) = drain(peer, forward.queue, expect=1)
    headers = got[1].headers
    # Every service sees the same message: the original id, chain and hop count.
    assert (headers["cap-msg-id"], headers["cap-corr-id"], headers["cap-corr-seq"]) == (
        "9002", "77", "3")
    assert json.loads(got[2]) == {"N": 5, "Behaviour": "ok"}


def test_a_reply_to_a_caps_message_carries_the_chains_original_correlation_id(
        bridged: Callable[..., Any], peer: Any, temp_subscriber: Any) -> None:
    out = bridged(SEND=[LonelyHappened.topic], bind=("probe.lonely-happened",))

    def reply(event: ProbeHappened) -> None:
        publish(LonelyHappened(n=event.n))

    temp_subscriber(PROBE, group="replier")(reply)
    received("9100", **{"cap-corr-id": "1923273228417118208", "cap-corr-seq": "2"})
    run()
    (got,) = drain(peer, out.queue, expect=1)
    headers = got[1].headers
    assert headers["cap-msg-name"] == LonelyHappened.topic
    assert (headers["cap-corr-id"], headers["cap-corr-seq"]) == ("1923273228417118208", "3")


def test_messages_the_broker_nacks_are_failed_attempts(bridged: Callable[..., Any],
                                                      peer: Any, unique: Callable[[str], str]
                                                      ) -> None:
    out = bridged(bind=())
    full = unique("full")  # a queue that refuses what does not fit (the broker nacks it)
    peer.queue_declare(full, arguments={"x-max-length": 3, "x-overflow": "reject-publish"})
    peer.queue_bind(full, out.exchange, "probe.#")
    messages = publish_many([ProbeHappened(n=n) for n in range(5)])
    run()
    outcomes = sorted((r.status, r.error_type) for r in
                      ReceivedMessage.objects.filter(group=out.group,
                                                     message_id__in=[m.pk for m in messages]))
    assert outcomes == sorted([(MessageStatus.SUCCEEDED, "")] * 3
                              + [(MessageStatus.RETRYING, "SendFailed")] * 2)
    assert all("nacked" in r.last_error for r in ReceivedMessage.objects.filter(
        error_type="SendFailed"))


def test_a_channel_closed_mid_batch_is_sent_again_on_a_fresh_connection(
        bridged: Callable[..., Any], peer: Any) -> None:
    """The exchange is deleted under a connected publisher: the broker closes its channel at
    the first message (404). The batch is sent again at once on a new connection (which
    declares the exchange again; as nobody is bound to the new one, it comes back
    unroutable: a failed attempt, not an outage)."""
    out = bridged()
    publish(ProbeHappened(n=1))
    run()  # connected
    peer.exchange_delete(out.exchange)
    messages = publish_many([ProbeHappened(n=n) for n in range(2, 5)])
    run()
    rows = ReceivedMessage.objects.filter(group=out.group, message_id__in=[m.pk for m in messages])
    assert {(r.status, r.attempts, r.error_type) for r in rows} == {
        (MessageStatus.RETRYING, 1, "SendFailed")}
    assert all("NO_ROUTE" in r.last_error for r in rows)
    assert not GroupState.objects.filter(group=out.group).exists()


def test_the_resolver_is_registered_only_while_bridges_are_configured(url: str) -> None:
    from integration_events import registry

    assert resolver not in registry._resolvers, "no BRIDGES in the test settings"
    bridges = {"out": {"TRANSPORT": "amqp", "URL": url, "SEND": [PROBE]}}
    with override_settings(INTEGRATION_EVENTS={**settings.INTEGRATION_EVENTS,
                                               "BRIDGES": bridges}):
        assert resolver in registry._resolvers
        assert [s.group for s in registry.all_subscriptions() if s.raw] == ["bridge:out"]
    assert resolver not in registry._resolvers


def test_an_exchange_declared_otherwise_backs_the_group_off_with_the_fix(
        bridged: Callable[..., Any], peer: Any, unique: Callable[[str], str]) -> None:
    """The exchange exists as a fanout (CAP declares a topic exchange): the broker refuses
    the declaration (406). Not the messages' fault: the group backs off and says why."""
    fanout = unique("fanout")
    peer.exchange_declare(fanout, "fanout", durable=True)
    out = bridged(EXCHANGE=fanout)
    message = publish(ProbeHappened(n=1))
    run()
    waiting = row(out.group, message)
    assert (waiting.status, waiting.attempts) == (MessageStatus.RETRYING, 0)
    reason = GroupState.objects.get(group=out.group).reason
    assert "refused to declare exchange" in reason and "durable topic exchange" in reason


def test_the_bridge_claims_its_batch_size_however_few_rows_claims_take(
        bridged: Callable[..., Any], peer: Any) -> None:
    # One claim, one publish, one wait for the confirms and one write per BATCH_SIZE rows,
    # also when CLAIM_BATCH_SIZE is smaller; the other groups still get their CLAIM_BATCH_SIZE.
    out = bridged(BATCH_SIZE=120)
    publish_many([ProbeHappened(n=n) for n in range(150)])
    worker = Worker(keep_leases=False)
    with override_settings(INTEGRATION_EVENTS={**settings.INTEGRATION_EVENTS,
                                               "CLAIM_BATCH_SIZE": 20}):
        while worker.dispatch_batch().total:
            pass
        worker.execute_batch()
    done = ReceivedMessage.objects.exclude(status=MessageStatus.PENDING)
    assert done.filter(group=out.group, status=MessageStatus.SUCCEEDED).count() == 120
    assert 0 < done.exclude(group=out.group).count() <= 20
    assert len(drain(peer, out.queue, expect=120)) == 120
