"""Sending: a subscriber group ``bridge:<name>`` per bridge, through the group-resolution seam.

Every local message whose topic matches a bridge's SEND patterns gets an inbox row in the
group ``bridge:<name>``, so it has the engine's retries, dead letters, requeue and admin
like any other group. The group's batch handler (``BridgeSender.send_batch``) encodes a
batch in CAP's wire format, publishes it with publisher confirms and ``mandatory=True``,
and reports one outcome per delivery:

- confirmed by the broker: done;
- returned (no queue bound for the topic) or nacked: a failed attempt, retried;
- not confirmed because the broker went away (connection lost, confirms timed out, broker
  unreachable): ``GroupUnavailable``, so the row goes back with its attempt refunded and
  the group backs off as a whole (GroupState, doubling): an outage spends no attempts.

Rows fail by age (FAIL_AFTER, ``RetryStrategy.max_age``), not by count. A message that
came in over a bridge is not sent out over a bridge unless that bridge has FORWARD_RECEIVED
(and never back over the bridge it came from).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.utils import timezone

from ..bridges.codec import OutboundMessage, encode_message
from ..bridges.config import BridgeConfig
from ..bridges.errors import (
    BridgeError,
    BrokerConnectionLost,
    BrokerUnavailable,
    TopologyConflict,
)
from ..conf import SETTING_NAME, IntegrationEventsSettings, get_settings
from ..context import Delivery
from ..events import event_class_for, known_topics
from ..exceptions import GroupUnavailable
from ..registry import Subscription, register_resolver, unregister_resolver

if TYPE_CHECKING:
    from ..bridges.amqp_publisher import AmqpPublisher, PublishResult
    from ..models import PublishedMessage

logger = logging.getLogger("integration_events")

GROUP_PREFIX = "bridge:"
# PublishOutcome values of a message the broker refused (not importing pika for them).
_REFUSED = frozenset({"returned", "nacked"})
# The first wait of a group whose broker went away (then 2, 4, 8 ... s up to
# RETRY_MAX_DELAY, see integration_events.groups.hold_back).
RETRY_AFTER = 1.0
# Rows of a bridge fail by age (FAIL_AFTER); the count only has to be out of the way.
MAX_ATTEMPTS = 1000


def group_name(bridge: str) -> str:
    """The subscriber group that sends over ``bridge``."""
    return f"{GROUP_PREFIX}{bridge}"


class SendFailed(BridgeError):
    """The broker did not take a message (returned as unroutable, or nacked): a failed
    attempt, retried with the group's backoff."""


class BridgeSender:
    """The batch handler of one bridge's group: encode, publish, confirm, report."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._local = threading.local()

    def config(self) -> BridgeConfig:
        return get_settings().BRIDGES[self.name]

    def send_batch(self, deliveries: Sequence[Delivery], *,
                   sent: Callable[[], None] | None = None) -> list[BaseException | None]:
        """Publish ``deliveries`` and report each one's outcome, in order. ``sent`` is called
        once the last chunk is on its way and only its confirms are awaited."""
        config = self.config()
        outcomes: list[BaseException | None] = [None] * len(deliveries)
        pending: list[tuple[int, OutboundMessage]] = []
        now = timezone.now()  # the batch's cap-senttime (whole seconds on the wire)
        for index, delivery in enumerate(deliveries):
            try:
                pending.append((index, self.encode(delivery, config, now)))
            except Exception as exc:  # WireEncodingError fails at once; anything else retries
                outcomes[index] = exc
        retried = False
        while pending:
            chunk = pending[: config.batch_size]
            last = sent if len(pending) <= config.batch_size else None
            try:
                results = self.publisher(config).publish_batch([m for _, m in chunk], sent=last)
            except BrokerConnectionLost as exc:
                # The confirmed ones reached the broker; the rest are unknown: send them again
                # once on a fresh connection (a connection that went stale while idle), then
                # give up for now and let the group back off.
                self.drop_publisher()
                self.settle(chunk, exc.results, outcomes)
                settled = _settled(chunk, exc.results)
                pending = [p for p in pending if p[0] not in settled]
                if retried:
                    return self.unavailable(pending, outcomes, str(exc))
                retried = True
                continue
            except (BrokerUnavailable, TopologyConflict) as exc:
                # Unreachable, or refusing our exchange (the operator must act): not the
                # messages' fault. GroupState.reason shows why in the admin.
                return self.unavailable(pending, outcomes, str(exc))
            self.settle(chunk, results, outcomes)
            pending = pending[len(chunk):]
        return outcomes

    def encode(self, delivery: Delivery, config: BridgeConfig, now: datetime | None = None
               ) -> OutboundMessage:
        message = delivery.message
        event_class = event_class_for(message.topic)
        return encode_message(
            # The context's headers are the message's (read once, in build_delivery) plus
            # the local "group", which does not go on the wire.
            topic=message.topic, message_id=message.pk, content=message.content,
            headers=delivery.context.headers, naming=config.naming,
            type_name=event_class.__name__ if event_class is not None else None,
            max_body_bytes=config.max_body_bytes, now=now,
        )

    def settle(self, chunk: Sequence[tuple[int, OutboundMessage]],
               results: Sequence[PublishResult], outcomes: list[BaseException | None]) -> None:
        """Record the confirmed, returned and nacked results of ``chunk`` in ``outcomes``."""
        for (index, message), result in zip(chunk, results, strict=False):
            if result.ok:
                outcomes[index] = None
            elif result.outcome in _REFUSED:
                fix = (f"Bind a queue for this topic on exchange {self.config().exchange!r} "
                       "(the receiving service's RECEIVE), or take the topic out of SEND."
                       if result.outcome == "returned" else
                       "The broker refused it (a full queue with x-overflow reject-publish, "
                       "or a broker error); it is retried.")
                outcomes[index] = SendFailed(
                    f"bridge {self.name}: {message.routing_key} {message.wire_id} "
                    f"{result.outcome}: {result.detail}. {fix}")

    def unavailable(self, pending: Sequence[tuple[int, OutboundMessage]],
                    outcomes: list[BaseException | None], reason: str
                    ) -> list[BaseException | None]:
        """Report ``pending`` as GroupUnavailable: back to the queue, attempt refunded."""
        self.drop_publisher()
        error = GroupUnavailable(
            f"bridge {self.name}: {reason}", retry_after=RETRY_AFTER)
        for index, _ in pending:
            outcomes[index] = error
        logger.warning("bridge unavailable bridge=%s unsent=%s reason=%r", self.name,
                       len(pending), reason[:300])
        return outcomes

    # --- one publisher per process and thread (pika connections are neither) -------------

    def publisher(self, config: BridgeConfig) -> AmqpPublisher:
        """This thread's publisher for the bridge, connected (raises BrokerUnavailable)."""
        from ..bridges.amqp_publisher import AmqpPublisher

        current = getattr(self._local, "publisher", None)
        key = (os.getpid(), config.url, config.exchange, config.connect_timeout,
               config.confirm_timeout)
        if current is not None and getattr(self._local, "key", None) != key:
            # Settings changed, or a forked child inherited its parent's socket.
            self.drop_publisher()
            current = None
        if current is None:
            current = AmqpPublisher.for_bridge(config)
            self._local.publisher, self._local.key = current, key
            current.connect()
        return current

    def drop_publisher(self) -> None:
        publisher = getattr(self._local, "publisher", None)
        self._local.publisher = None
        if publisher is not None:
            try:
                publisher.close()
            except Exception:  # already broken: nothing to close
                logger.debug("bridge publisher close failed bridge=%s", self.name,
                             exc_info=True)


def _settled(chunk: Sequence[tuple[int, OutboundMessage]],
             results: Sequence[PublishResult]) -> set[int]:
    """Indexes of ``chunk`` whose result is final (confirmed, returned or nacked)."""
    return {index for (index, _), result in zip(chunk, results, strict=False)
            if result.ok or result.outcome in _REFUSED}




class _Bridge:
    """One configured bridge: its config, sender and subscriptions (one per topic)."""

    def __init__(self, config: BridgeConfig) -> None:
        self.config = config
        self.group = group_name(config.name)
        self.sender = BridgeSender(config.name)
        self._subs: dict[str, Subscription] = {}
        self.overrides = (("max_attempts", MAX_ATTEMPTS), ("max_age", config.fail_after))

    def subscription(self, topic: str) -> Subscription:
        sub = self._subs.get(topic)
        if sub is None:
            sub = self._subs[topic] = Subscription(
                topic=topic, group=self.group, handler=self.sender.send_batch,
                event_type=None, wants_context=False, atomic=False, topic_was_constant=True,
                retry_overrides=self.overrides, batch_handler=self.sender.send_batch,
                raw=True, batch_sent=True, locked_claim=self.config.locked_claims,
                claim_size=self.config.batch_size, claimers=self.config.senders,
            )
        return sub


class BridgeResolver:
    """The groups ``bridge:<name>`` of INTEGRATION_EVENTS["BRIDGES"] (the GroupResolver
    seam of integration_events.registry), rebuilt when the settings change."""

    def __init__(self) -> None:
        self._built: tuple[IntegrationEventsSettings, dict[str, _Bridge]] | None = None

    def bridges(self) -> dict[str, _Bridge]:
        settings = get_settings()
        if self._built is None or self._built[0] is not settings:
            self.close()
            self._built = (settings, {name: _Bridge(config)
                                      for name, config in settings.BRIDGES.items()})
        return self._built[1]

    def close(self) -> None:
        """Close this thread's broker connections (the settings changed, or a test ends)."""
        if self._built is not None:
            for bridge in self._built[1].values():
                bridge.sender.drop_publisher()

    def groups_for(self, message: PublishedMessage) -> Mapping[str, Subscription]:
        found: dict[str, Subscription] = {}
        origin = message.origin
        for bridge in self.bridges().values():
            config = bridge.config
            if not config.sends(message.topic):
                continue
            if origin and (origin == config.name or not config.forward_received):
                continue
            found[bridge.group] = bridge.subscription(message.topic)
        return found

    def get(self, topic: str, group: str) -> Subscription | None:
        if not group.startswith(GROUP_PREFIX):
            return None
        bridge = self.bridges().get(group.removeprefix(GROUP_PREFIX))
        return bridge.subscription(topic) if bridge is not None else None

    def declared(self) -> list[Subscription]:
        topics = known_topics()
        return [bridge.subscription(topic) for bridge in self.bridges().values()
                for topic in topics if bridge.config.sends(topic)]


resolver = BridgeResolver()


def sync_resolver(**kwargs: Any) -> None:
    """Register the bridge resolver while BRIDGES names a bridge, and only then (apps'
    ready() and every change of the setting). Invalid settings register nothing: the
    system checks report them."""
    if kwargs.get("setting", SETTING_NAME) != SETTING_NAME:
        return
    try:
        configured = bool(get_settings().BRIDGES)
    except ImproperlyConfigured:
        configured = False
    if configured:
        register_resolver(resolver)
    else:
        unregister_resolver(resolver)


setting_changed.connect(sync_resolver, dispatch_uid="integration_events.bridging.resolver")
