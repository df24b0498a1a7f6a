"""Test settings: the demo project's, plus the probe app the engine tests use."""

import os

from project.settings import *  # noqa: F403
from project.settings import INSTALLED_APPS, INTEGRATION_EVENTS

INSTALLED_APPS = [*INSTALLED_APPS, "tests.eventapp"]
CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
# The test runner switches email to the locmem backend (django.core.mail.outbox) itself.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# Small limits so that retries and dead letters happen within a test; a qcluster subprocess
# started by a test gets its own values through the same environment variables.
INTEGRATION_EVENTS = {
    **INTEGRATION_EVENTS,
    "MAX_ATTEMPTS": int(os.environ.get("IE_MAX_ATTEMPTS", "3")),
    "RETRY_BASE_DELAY": float(os.environ.get("IE_RETRY_BASE_DELAY", "0.5")),
    "RETRY_MAX_DELAY": 5.0,
}
