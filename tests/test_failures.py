"""integration_events.failures' log fields: every engine log line carries its fields as
``extra`` keys (message_id, topic, group, attempt where they exist) besides the key=value text,
so a JSON formatter gets them."""

from __future__ import annotations

import ast
import json
import logging
from pathlib import Path

import pytest
from django.test import override_settings

from integration_events import publish
from integration_events.failures import log_extra, log_fields
from integration_events.models import ReceivedMessage
from integration_events.testing import deliver_pending, make_due
from tests.eventapp.events import ProbeHappened

PACKAGE = Path(__file__).resolve().parent.parent / "integration_events"
# The engine's modules: every record they log carries extra fields.
ENGINE = ("failures", "execute", "batches", "dispatch", "sweep", "worker", "publisher",
          "leases", "handoff", "nodes", "groups", "delivery", "tasks")


class JsonFormatter(logging.Formatter):
    """What a JSON formatter does: the record's non-standard attributes become keys."""

    standard = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        fields = {k: v for k, v in vars(record).items() if k not in self.standard}
        return json.dumps({"message": record.getMessage(), **fields}, default=str)


@pytest.mark.django_db
def test_a_retry_and_a_dead_letter_carry_their_fields_as_keys(caplog) -> None:
    caplog.set_level(logging.INFO, logger="integration_events")
    with override_settings(INTEGRATION_EVENTS={"MAX_ATTEMPTS": 2, "NUDGE": False}):
        message = publish(ProbeHappened(n=1, behaviour="fail", only_group="probe-a"))
        deliver_pending()
        make_due()
        deliver_pending()
    lines = [json.loads(JsonFormatter().format(r)) for r in caplog.records
             if r.name == "integration_events"]
    retrying, failed = lines
    assert retrying["message"].startswith("message retrying message_id=")
    expected = {"message_id": str(message.pk), "topic": ProbeHappened.topic,
                "group": "probe-a"}
    assert {k: retrying[k] for k in expected} == expected and retrying["attempt"] == 1
    assert retrying["error"].startswith("RuntimeError: probe 1 fails")
    assert 0 <= retrying["retry_in"] < 10
    assert {k: failed[k] for k in expected} == expected and failed["attempt"] == 2
    # The text keeps its key=value form.
    row = ReceivedMessage.objects.get(group="probe-a")
    assert log_fields(row) in failed["message"]
    assert log_extra(row) == {**expected, "attempt": 2}


@pytest.mark.django_db
def test_a_published_row_has_no_group() -> None:
    with override_settings(INTEGRATION_EVENTS={"NUDGE": False}):
        message = publish(ProbeHappened(n=1))
    assert log_extra(message) == {"message_id": str(message.pk), "topic": message.topic,
                                  "attempt": 0}


def _logger_calls(path: Path) -> list[ast.Call]:
    levels = {"debug", "info", "warning", "error", "exception", "critical"}
    return [node for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr in levels and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "logger"]


def test_every_engine_log_call_passes_extra_and_row_lines_pass_log_extra() -> None:
    missing, mismatched = [], []
    for name in ENGINE:
        for call in _logger_calls(PACKAGE / f"{name}.py"):
            where = f"{name}.py:{call.lineno}"
            extra = next((k.value for k in call.keywords if k.arg == "extra"), None)
            if extra is None:
                missing.append(where)
                continue
            rows = [ast.unparse(a.args[0]) for a in call.args if isinstance(a, ast.Call)
                    and isinstance(a.func, ast.Name) and a.func.id == "log_fields"]
            if rows and f"log_extra({rows[0]})" not in ast.unparse(extra):
                mismatched.append(where)
    assert missing == [], "logger calls without extra="
    assert mismatched == [], "log_fields(row) in the text but not log_extra(row) in extra"
