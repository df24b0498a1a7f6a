"""@subscriber: the registry of handlers, one per (topic, group), and its autodiscovery."""

from __future__ import annotations

import enum
import inspect
import re
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from django.apps import apps
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import autodiscover_modules

from .conf import IntegrationEventsSettings, get_settings
from .context import Delivery, MessageContext
from .events import IntegrationEvent
from .retry import RetryStrategy

if TYPE_CHECKING:
    from .models import PublishedMessage

__all__ = [
    "Delivery", "GroupResolver", "MessageContext", "Subscription", "all_subscriptions",
    "autodiscover", "default_retry", "get_subscription", "groups_for", "register_resolver",
    "subscriber", "subscriptions", "unknown_topic_retry", "unregister_resolver",
]

Handler = Callable[..., Any]
# A handler that takes a whole batch of deliveries and reports, in the same order, None for
# each one it completed and the exception for each one that failed. It is not atomic: it
# talks to an outside system (a broker: send 100, await the confirms, then report). A
# GroupUnavailable reported for a delivery (the system went away mid-batch) hands it back
# unstarted and backs the group off, like one raised for the whole batch.
BatchHandler = Callable[[Sequence[Delivery]], Sequence[BaseException | None]]
RetryOverrides = tuple[tuple[str, Any], ...]


class ExecutionMode(enum.StrEnum):
    """How the engine runs a group's handler."""

    ATOMIC = "atomic"
    """In the inbox row's transaction: the handler's writes commit with its status. First
    attempts run many to a transaction (a savepoint each when one fails)."""
    PLAIN = "plain"
    """Outside any transaction, one delivery at a time (handlers that only call out)."""
    BATCH = "batch"
    """A batch handler gets many deliveries at once and reports each one's outcome."""


@dataclass(frozen=True)
class Rate:
    """At most ``starts`` handler starts in any window of ``seconds``."""

    starts: int
    seconds: float

    def __str__(self) -> str:
        unit = {1.0: "s", 60.0: "m", 3600.0: "h"}.get(self.seconds, f"{self.seconds:g}s")
        return f"{self.starts}/{unit}"


_RATE = re.compile(r"^\s*(\d+)\s*/\s*(s|sec|second|m|min|minute|h|hour)\s*$")


def parse_rate(text: str) -> Rate:
    """"10/s", "600/m", "1000/h" -> Rate; ValueError for anything else."""
    match = _RATE.match(text) if isinstance(text, str) else None
    if match is None or int(match.group(1)) < 1:
        raise ValueError(f"rate_limit must look like '10/s', '600/m' or '1000/h', got {text!r}")
    seconds = {"s": 1.0, "m": 60.0, "h": 3600.0}[match.group(2)[0]]
    return Rate(int(match.group(1)), seconds)


_retry_memo: dict[RetryOverrides, tuple[IntegrationEventsSettings, RetryStrategy]] = {}


def _retry_for(overrides: RetryOverrides) -> RetryStrategy:
    """The settings' retry strategy with ``overrides``, built once per settings object (the
    settings are rebuilt when INTEGRATION_EVENTS changes, so override_settings works)."""
    settings = get_settings()
    hit = _retry_memo.get(overrides)
    if hit is not None and hit[0] is settings:
        return hit[1]
    strategy = settings.retry_strategy().with_overrides(**dict(overrides))
    _retry_memo[overrides] = (settings, strategy)
    return strategy


def default_retry() -> RetryStrategy:
    """The settings' retry policy (published messages, and subscribers without overrides)."""
    return _retry_for(())


def unknown_topic_retry() -> RetryStrategy:
    """The policy for a topic or group this process has no handler for: retried
    UNKNOWN_TOPIC_MAX_ATTEMPTS times (a newer deployment may know it), then failed."""
    return _retry_for((("max_attempts", get_settings().UNKNOWN_TOPIC_MAX_ATTEMPTS),))


@dataclass(frozen=True)
class Subscription:
    """One group's handler for one topic."""

    topic: str
    group: str
    handler: Handler
    event_type: type[IntegrationEvent] | None
    wants_context: bool
    atomic: bool
    topic_was_constant: bool
    # max_attempts / base_delay / max_delay / jitter given to @subscriber (None: the setting).
    retry_overrides: RetryOverrides = ()
    batch_handler: BatchHandler | None = None
    # Deliver the stored JSON as is (no event class validates it): for pass-through groups
    # such as a broker bridge.
    raw: bool = False
    # The batch handler takes ``sent=``: a callable it calls once every delivery is handed
    # over and only the outside system's confirmations are awaited; the engine writes the
    # rows' likely outcome meanwhile (see integration_events.batches.Overlap).
    batch_sent: bool = False
    # On a database with SKIP LOCKED, run this batch handler's rows under the claim's row
    # locks instead of a lease: each row written once, with its attempt (integration_events.
    # claims). Opt-in: a worker killed while the batch runs counts no attempt.
    locked_claim: bool = False
    # A batch handler's group may take up to this many rows in one claim, more than
    # CLAIM_BATCH_SIZE (FairShare; a broker bridge's BATCH_SIZE: one publish, one wait for
    # the confirms and one write per claim, however small CLAIM_BATCH_SIZE is).
    claim_size: int | None = None
    # A locked-claim batch group may have this many claims of its rows in flight in each
    # worker task while it has a backlog: the task's own, plus claimers - 1 threads of the
    # group's own (integration_events.extra_claimers; a broker bridge's SENDERS).
    claimers: int = 1
    # Flow control for the whole group (docs/flow-control.md): at most this many handlers of
    # the group running at once across every cluster; at most this many starts per window.
    max_concurrency: int | None = None
    rate_limit: Rate | None = None

    @property
    def dotted_path(self) -> str:
        return f"{self.handler.__module__}.{self.handler.__qualname__}"

    @property
    def retry(self) -> RetryStrategy:
        """This subscriber's retry policy (the settings with its overrides)."""
        return _retry_for(self.retry_overrides)

    @property
    def mode(self) -> ExecutionMode:
        if self.batch_handler is not None:
            return ExecutionMode.BATCH
        return ExecutionMode.ATOMIC if self.atomic else ExecutionMode.PLAIN


# topic -> group -> subscription
_subscriptions: dict[str, dict[str, Subscription]] = {}


def _event_type_of(handler: Handler) -> tuple[type[IntegrationEvent] | None, bool]:
    sig = inspect.signature(handler)
    params = [
        p for p in sig.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if not params or len(params) > 2:
        raise ImproperlyConfigured(
            f"subscriber {handler.__module__}.{handler.__qualname__} must take "
            "(event) or (event, context)"
        )
    try:
        hints = typing.get_type_hints(handler)
    except Exception:  # an annotation that cannot be resolved: reported by check E003
        hints = {}
    event_type = hints.get(params[0].name)
    if not (isinstance(event_type, type) and issubclass(event_type, IntegrationEvent)):
        event_type = None
    return event_type, len(params) == 2


def subscriber(
    topic: str,
    *,
    group: str | None = None,
    atomic: bool = True,
    max_attempts: int | None = None,
    retry_base_delay: float | None = None,
    retry_max_delay: float | None = None,
    retry_jitter: float | None = None,
    max_concurrency: int | None = None,
    rate_limit: str | None = None,
) -> Callable[[Handler], Handler]:
    """Register the decorated function as ``group``'s handler for ``topic``.

    The event type is taken from the annotation of the first parameter and the payload is
    validated with it. A second parameter, if any, receives the MessageContext. ``group``
    defaults to the label of the app that defines the handler. With ``atomic=True`` (the
    default) the handler's database writes commit together with the inbox row's status, so
    they happen once however often the message is delivered; set ``atomic=False`` for a
    handler that only calls outside systems (it must then be idempotent itself).
    ``max_attempts``, the retry delays and ``retry_jitter`` override the INTEGRATION_EVENTS
    defaults. ``max_concurrency`` (handlers of the group running at once across every cluster)
    and ``rate_limit`` ("10/s", "600/m", "1000/h": starts in any window of that length) limit
    the whole group (docs/flow-control.md).
    """
    topic_value = str(topic.value) if isinstance(topic, enum.Enum) else str(topic)
    if not topic_value:
        raise ImproperlyConfigured("subscriber(topic): the topic must not be empty")
    overrides: RetryOverrides = tuple(
        (name, value) for name, value in (
            ("max_attempts", max_attempts), ("base_delay", retry_base_delay),
            ("max_delay", retry_max_delay), ("jitter", retry_jitter),
        ) if value is not None
    )
    try:
        RetryStrategy().with_overrides(**dict(overrides))
        rate = parse_rate(rate_limit) if rate_limit is not None else None
    except ValueError as exc:
        raise ImproperlyConfigured(f"subscriber({topic_value!r}): {exc}") from exc
    if max_concurrency is not None and not 1 <= max_concurrency <= 1000:
        raise ImproperlyConfigured(
            f"subscriber({topic_value!r}): max_concurrency must be between 1 and 1000")

    def decorator(handler: Handler) -> Handler:
        event_type, wants_context = _event_type_of(handler)
        group_name = group
        if group_name is None:
            app = apps.get_containing_app_config(handler.__module__)
            if app is None:
                raise ImproperlyConfigured(
                    f"subscriber {handler.__module__}.{handler.__qualname__}: not inside an "
                    "installed app, so the group cannot default to the app label; pass group="
                )
            group_name = app.label
        sub = Subscription(
            topic=topic_value,
            group=group_name,
            handler=handler,
            event_type=event_type,
            wants_context=wants_context,
            atomic=atomic,
            topic_was_constant=isinstance(topic, enum.Enum),
            retry_overrides=overrides,
            max_concurrency=max_concurrency,
            rate_limit=rate,
        )
        groups = _subscriptions.setdefault(topic_value, {})
        existing = groups.get(group_name)
        if existing is not None and existing.dotted_path != sub.dotted_path:
            raise ImproperlyConfigured(
                f"group {group_name!r} has two handlers for topic {topic_value!r}: "
                f"{existing.dotted_path} and {sub.dotted_path}. A group gets one copy of each "
                "message, so it can have one handler per topic; give one of them another group="
            )
        groups[group_name] = sub
        return handler

    return decorator


def subscriptions(topic: str) -> dict[str, Subscription]:
    """The groups subscribed to ``topic`` with @subscriber, and their subscriptions."""
    return _subscriptions.get(topic, {})


def all_subscriptions() -> list[Subscription]:
    """Every @subscriber registration, and the fixed subscriptions resolvers declare."""
    found = [s for groups in _subscriptions.values() for s in groups.values()]
    for resolver in _resolvers:
        found.extend(resolver.declared())
    return found


# --- group resolution ----------------------------------------------------------------------


class GroupResolver(Protocol):
    """Run-time groups (the seam for bridges, webhooks and other pumps of messages out).

    The @subscriber registry answers for every group declared in code. A resolver adds groups
    whose handlers are known only from configuration or the database (``bridge:<name>``,
    ``webhook:<id>``): ``groups_for`` says which of its groups a message is fanned out to,
    and ``get`` returns the subscription that executes one of its groups. Its subscriptions
    may be non-atomic and batch handlers (``Subscription.batch_handler``). Register one with
    ``register_resolver``; resolvers are asked after the registry, in registration order.
    """

    def groups_for(self, message: PublishedMessage) -> Mapping[str, Subscription]:
        """The resolver's groups that receive ``message`` (an empty mapping for none)."""
        ...

    def get(self, topic: str, group: str) -> Subscription | None:
        """The subscription that executes ``group``'s copy of ``topic``, if it is ours."""
        ...

    def declared(self) -> Sequence[Subscription]:
        """The subscriptions to list in the admin and the checks (may be empty)."""
        ...


_resolvers: list[GroupResolver] = []


def register_resolver(resolver: GroupResolver) -> None:
    """Add a source of run-time groups (idempotent for the same object)."""
    if resolver not in _resolvers:
        _resolvers.append(resolver)


def unregister_resolver(resolver: GroupResolver) -> None:
    if resolver in _resolvers:
        _resolvers.remove(resolver)


def groups_for(message: PublishedMessage) -> dict[str, Subscription]:
    """Every group ``message`` is fanned out to: @subscriber groups of its topic, then the
    groups resolvers add (a group name is taken by whoever declares it first)."""
    groups = _subscriptions.get(message.topic, {})
    if not _resolvers:
        return groups
    merged = dict(groups)
    for resolver in _resolvers:
        for group, sub in resolver.groups_for(message).items():
            merged.setdefault(group, sub)
    return merged


class GroupLimits(NamedTuple):
    max_concurrency: int | None
    rate_limit: Rate | None

    @property
    def limited(self) -> bool:
        return self.max_concurrency is not None or self.rate_limit is not None


NO_LIMITS = GroupLimits(None, None)


def group_limits() -> dict[str, GroupLimits]:
    """The flow-control limits of every group that declares one (the first subscription of
    the group that declares a limit wins; check E013 reports groups that disagree)."""
    limits: dict[str, GroupLimits] = {}
    for sub in all_subscriptions():
        if sub.max_concurrency is None and sub.rate_limit is None:
            continue
        current = limits.get(sub.group, NO_LIMITS)
        limits[sub.group] = GroupLimits(current.max_concurrency or sub.max_concurrency,
                                        current.rate_limit or sub.rate_limit)
    return limits


def batch_groups() -> frozenset[str]:
    """The groups run by a batch handler (their rows' attempts are counted in the claim)."""
    if not _resolvers:
        return frozenset()
    return frozenset(s.group for s in all_subscriptions() if s.mode is ExecutionMode.BATCH)


def locked_claim_groups() -> frozenset[str]:
    """The batch-handler groups that asked to run under the claim's row locks."""
    if not _resolvers:
        return frozenset()
    return frozenset(s.group for s in all_subscriptions()
                     if s.mode is ExecutionMode.BATCH and s.locked_claim)


def group_claimers() -> dict[str, int]:
    """The locked-claim batch groups that ask for more than one claim in flight per worker
    task (``Subscription.claimers``; the largest where a group's subscriptions disagree)."""
    if not _resolvers:
        return {}
    wanted: dict[str, int] = {}
    for sub in all_subscriptions():
        if sub.mode is ExecutionMode.BATCH and sub.locked_claim and sub.claimers > 1:
            wanted[sub.group] = max(wanted.get(sub.group, 0), sub.claimers)
    return wanted


def group_claim_sizes() -> dict[str, int]:
    """The batch-handler groups with a claim size of their own (``Subscription.claim_size``;
    the largest where a group's subscriptions disagree)."""
    if not _resolvers:
        return {}
    sizes: dict[str, int] = {}
    for sub in all_subscriptions():
        if sub.mode is ExecutionMode.BATCH and sub.claim_size:
            sizes[sub.group] = max(sizes.get(sub.group, 0), sub.claim_size)
    return sizes


def get_subscription(topic: str, group: str) -> Subscription | None:
    """The subscription that executes ``group``'s copy of ``topic`` (None: no handler here)."""
    sub = _subscriptions.get(topic, {}).get(group)
    if sub is not None or not _resolvers:
        return sub
    for resolver in _resolvers:
        sub = resolver.get(topic, group)
        if sub is not None:
            return sub
    return None


def unregister(topic: str, group: str) -> None:
    """Remove a subscription (for tests that register handlers locally)."""
    topic_value = str(topic.value) if isinstance(topic, enum.Enum) else str(topic)
    groups = _subscriptions.get(topic_value, {})
    groups.pop(group, None)
    if not groups:
        _subscriptions.pop(topic_value, None)


def autodiscover() -> None:
    """Import the ``subscribers`` module of every installed app (and ``events``, so that
    every topic a subscriber names is declared even if nothing imported it yet)."""
    autodiscover_modules("events")
    autodiscover_modules("subscribers")
