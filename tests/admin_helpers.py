"""Users, clients, messages and URL names shared by the admin tests (test_admin,
test_dashboard, test_operations); their fixtures are in tests/admin_fixtures.py."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import Permission, User
from django.test import Client

from integration_events import publish
from integration_events.models import PublishedMessage
from integration_events.testing import deliver_pending
from tests.eventapp.events import ProbeHappened

XSS = '<script>alert("x")</script><b onmouseover="evil()">'
XSS_ESCAPED = "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;"

OVERVIEW = "admin:integration_events_overview"
LIVE = "admin:integration_events_live"
SUBSCRIBERS = "admin:integration_events_subscribers"
NODES = "admin:integration_events_nodes"
PUB_LIST = "admin:integration_events_publishedmessage_changelist"
RECV_LIST = "admin:integration_events_receivedmessage_changelist"
DASHBOARD_PAGES = (OVERVIEW, LIVE, SUBSCRIBERS, NODES)
LIST_PAGES = (PUB_LIST, RECV_LIST)

VIEW = ("view_publishedmessage", "view_receivedmessage", "view_workernode")
CHANGE = ("change_publishedmessage", "change_receivedmessage")
DELETE = ("delete_publishedmessage", "delete_receivedmessage")



def make_user(name: str, *, staff: bool = True, perms: tuple[str, ...] = ()) -> Client:
    user = User.objects.create_user(name, password="pw", is_staff=staff)
    for codename in perms:
        user.user_permissions.add(Permission.objects.get(
            content_type__app_label="integration_events", codename=codename))
    client = Client()
    client.force_login(user)
    return client


def failed_message(behaviour: str = "fail", n: int = 1, text: str = "") -> PublishedMessage:
    """A message whose group probe-a handler fails every attempt (until it is told not to)."""
    message = publish(ProbeHappened(n=n, behaviour=behaviour, only_group="probe-a", text=text))
    deliver_pending(include_delayed=True)
    return message


def text_of(response: Any) -> str:
    return response.content.decode()
