"""Fixtures of the admin tests, loaded with ``pytest_plugins = ["tests.admin_fixtures"]``
(helpers to import are in tests/admin_helpers.py)."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.test import Client

from tests.admin_helpers import CHANGE, VIEW, make_user


@pytest.fixture
def admin_client_() -> Client:
    User.objects.create_superuser("root", "root@example.com", "pw")
    client = Client()
    client.login(username="root", password="pw")
    return client


@pytest.fixture
def viewer() -> Client:
    return make_user("viewer", perms=VIEW)


@pytest.fixture
def operator() -> Client:
    return make_user("operator", perms=VIEW + CHANGE)
