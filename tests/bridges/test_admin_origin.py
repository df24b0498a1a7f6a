"""The admin's message page shows where a message came from: the bridge and the sender's
message id of a received one, blank for a local one (integration_events.admin)."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from integration_events import publish
from integration_events.bridges import parse_bridge
from integration_events.bridging.receiving import store_batch
from integration_events.models import PublishedMessage
from tests.eventapp.events import ProbeHappened

from .helpers import cap_delivery

pytestmark = pytest.mark.django_db


def page(client: Client, message: PublishedMessage) -> str:
    url = reverse("admin:integration_events_publishedmessage_change", args=[message.pk])
    response = client.get(url)
    assert response.status_code == 200
    return response.content.decode()


def test_the_message_page_shows_origin_and_wire_id(admin_client: Client) -> None:
    config = parse_bridge("rabbit", {"TRANSPORT": "amqp", "URL": "amqp://h/", "QUEUE": "q",
                                     "RECEIVE": ["probe.#"]})
    store_batch([cap_delivery("1923273228417118208"), cap_delivery("77", body=b"<not json>")],
                config, "default")
    received = PublishedMessage.objects.get(wire_id="1923273228417118208")
    html = page(admin_client, received)
    assert "Origin" in html and "rabbit" in html and "1923273228417118208" in html
    rejected = page(admin_client, PublishedMessage.objects.get(wire_id="77"))
    assert "WireRejected: rejected (not-json)" in rejected and "&lt;not json&gt;" in rejected
    local = page(admin_client, publish(ProbeHappened(n=1)))
    assert "1923273228417118208" not in local


def test_the_subscribers_page_lists_the_bridge_groups(admin_client: Client) -> None:
    from django.conf import settings
    from django.test import override_settings

    bridges = {"rabbit": {"TRANSPORT": "amqp", "URL": "amqp://h/", "SEND": ["probe.*"]}}
    with override_settings(INTEGRATION_EVENTS={**settings.INTEGRATION_EVENTS,
                                               "BRIDGES": bridges}):
        response = admin_client.get(reverse("admin:integration_events_subscribers"))
    html = response.content.decode()
    assert response.status_code == 200
    assert "bridge:rabbit" in html and "send_batch" in html
