"""The test settings with the file-exporting OpenTelemetry instrumentation (a qcluster started
by tests/test_otel.py's cluster test)."""

from tests.settings import *  # noqa: F403
from tests.settings import INTEGRATION_EVENTS

INTEGRATION_EVENTS = {**INTEGRATION_EVENTS, "INSTRUMENTATION": ["tests.otel_support.FileTelemetry"]}
