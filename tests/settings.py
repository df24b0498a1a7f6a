"""Test settings: the demo project's, plus the probe app the engine tests use."""

import json
import os

from project.settings import *  # noqa: F403
from project.settings import INSTALLED_APPS, INTEGRATION_EVENTS

INSTALLED_APPS = [*INSTALLED_APPS, "tests.eventapp", "tests.reliability.probe"]
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
    # A dotted path; the reliability suite points it at tests.reliability.probe.callbacks.
    "FAILED_THRESHOLD_CALLBACK": os.environ.get("IE_FAILED_THRESHOLD_CALLBACK") or None,
    "UNKNOWN_TOPIC_MAX_ATTEMPTS": int(os.environ.get("IE_UNKNOWN_TOPIC_MAX_ATTEMPTS", "10")),
    "HEARTBEAT_INTERVAL": float(os.environ.get("IE_HEARTBEAT_INTERVAL", "30")),
    # No demo faults in the engine's tests and benchmarks (the sample tests turn them on);
    # a qcluster started by a test may get dotted paths (comma-separated), e.g. a fault.
    "INSTRUMENTATION": [p for p in os.environ.get("IE_INSTRUMENTATION", "").split(",") if p],
    # bench/flow.py compares claim strategies in a qcluster subprocess.
    **({"CLAIM_STRATEGY": os.environ["IE_CLAIM_STRATEGY"]}
       if os.environ.get("IE_CLAIM_STRATEGY") else {}),
}
# django-q2's task timeout for a qcluster started by a test (the reliability suite's hanging
# handler needs a small one). Unset: the project's.
if os.environ.get("IE_Q_TIMEOUT"):
    Q_CLUSTER = {**Q_CLUSTER, "timeout": int(os.environ["IE_Q_TIMEOUT"])}  # noqa: F405
# Broker bridges for a qcluster or integration_events_consume started by a bridge test
# (tests/bridges): the BRIDGES dict as JSON.
if os.environ.get("IE_BRIDGES"):
    INTEGRATION_EVENTS["BRIDGES"] = json.loads(os.environ["IE_BRIDGES"])
