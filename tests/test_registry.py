from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured

from integration_events.registry import get_subscription, subscriber, subscriptions, unregister
from tests.eventapp.events import LonelyHappened, ProbeHappened
from tests.eventapp.topics import ProbeTopics


def test_discovered_subscribers_and_default_group() -> None:
    groups = subscriptions(ProbeTopics.PROBE_HAPPENED)
    assert set(groups) == {"probe-a", "probe-b"}
    chain = get_subscription(ProbeTopics.CHAIN_LINKED, "eventapp")
    assert chain is not None, "the group defaults to the app label"
    assert chain.dotted_path == "tests.eventapp.subscribers.extend_chain"
    assert groups["probe-a"].event_type is ProbeHappened
    assert groups["probe-a"].wants_context


def test_second_handler_for_a_group_is_an_error() -> None:
    def other(event: ProbeHappened) -> None: ...

    with pytest.raises(ImproperlyConfigured, match="two handlers for topic"):
        subscriber(ProbeTopics.PROBE_HAPPENED, group="probe-a")(other)
    assert get_subscription(ProbeTopics.PROBE_HAPPENED, "probe-a").handler.__name__ == "probe_a"


def test_handler_signature_checked() -> None:
    def too_many(a: LonelyHappened, b: object, c: object) -> None: ...

    with pytest.raises(ImproperlyConfigured, match=r"\(event\) or \(event, context\)"):
        subscriber(ProbeTopics.LONELY_HAPPENED, group="x")(too_many)


def test_group_needs_an_app_or_an_explicit_name() -> None:
    def handler(event: LonelyHappened) -> None: ...

    handler.__module__ = "not_an_installed_app.subscribers"
    with pytest.raises(ImproperlyConfigured, match="pass group="):
        subscriber(ProbeTopics.LONELY_HAPPENED)(handler)


def test_retry_overrides() -> None:
    def handler(event: LonelyHappened) -> None: ...

    subscriber(ProbeTopics.LONELY_HAPPENED, group="tuned", max_attempts=7,
               retry_base_delay=1.5)(handler)
    try:
        strategy = get_subscription(ProbeTopics.LONELY_HAPPENED, "tuned").retry
        assert (strategy.max_attempts, strategy.base_delay) == (7, 1.5)
    finally:
        unregister(ProbeTopics.LONELY_HAPPENED, "tuned")
