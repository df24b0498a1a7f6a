"""integration_events.logs: this library's nudges do not print django-q2's "Enqueued" line;
everyone else's async_task still does, and the cluster's other records are untouched."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import pytest
from django.db import transaction
from django_q.models import OrmQ
from django_q.tasks import async_task

from integration_events import publish
from integration_events.logs import DJANGO_Q_LOGGER, OwnEnqueueFilter, own_enqueue
from integration_events.publisher import nudge
from integration_events.tasks import DjangoQPump
from tests.eventapp.events import LonelyHappened

pytestmark = pytest.mark.django_db


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def enqueued(self) -> list[str]:
        return [r.getMessage() for r in self.records if r.getMessage().startswith("Enqueued")]


@pytest.fixture
def django_q_log() -> Iterator[_Records]:
    """A handler on the django-q logger itself (django-q2 may have turned its propagation
    off), with the logger at INFO as django-q2 sets it by default."""
    logger = logging.getLogger(DJANGO_Q_LOGGER)
    handler, level = _Records(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_app_ready_installed_the_filter_on_the_django_q_logger_once() -> None:
    from integration_events.logs import install_enqueue_filter

    install_enqueue_filter()  # again: still one
    filters = logging.getLogger(DJANGO_Q_LOGGER).filters
    assert sum(isinstance(f, OwnEnqueueFilter) for f in filters) == 1


def test_our_enqueue_is_not_logged_but_really_enqueued(django_q_log: _Records) -> None:
    before = OrmQ.objects.count()
    DjangoQPump().enqueue_process("default")
    assert OrmQ.objects.count() == before + 1, "the task is queued; only its line is dropped"
    assert django_q_log.enqueued() == []


@pytest.mark.django_db(transaction=True)
def test_a_publish_nudge_after_commit_prints_nothing(django_q_log: _Records) -> None:
    before = OrmQ.objects.count()
    with transaction.atomic():
        publish(LonelyHappened(n=1))
    assert OrmQ.objects.count() == before + 1
    assert nudge(force=True) is True
    assert OrmQ.objects.count() == before + 2
    assert django_q_log.enqueued() == []


def test_someone_elses_async_task_keeps_its_enqueued_line(django_q_log: _Records) -> None:
    async_task("math.floor", 1.5)
    assert len(django_q_log.enqueued()) == 1
    assert django_q_log.records[0].levelno == logging.INFO


def test_other_threads_and_other_records_pass_while_we_enqueue(
    django_q_log: _Records,
) -> None:
    logger = logging.getLogger(DJANGO_Q_LOGGER)
    with own_enqueue():
        # Another thread starts with a fresh context: its async_task is not ours.
        other = threading.Thread(target=lambda: logger.info("Enqueued [q] 42"))
        other.start()
        other.join()
        logger.info("Enqueued [q] 43")  # ours: dropped
        logger.warning("Enqueued [q] 44 could not be signed")  # not INFO: kept
        logger.info("Processed 'x'")  # not an Enqueued line: kept
    logger.info("Enqueued [q] 45")  # after the block: kept
    assert [r.getMessage() for r in django_q_log.records] == [
        "Enqueued [q] 42", "Enqueued [q] 44 could not be signed", "Processed 'x'",
        "Enqueued [q] 45"]


def _logged_in_package() -> set[tuple[str, str]]:
    """(level, message name) of every ``logger.<level>("...")`` call in integration_events/:
    the name is the message's leading words, before its first %-placeholder or key=value."""
    import ast
    from pathlib import Path

    import integration_events

    levels = {"debug": "DEBUG", "info": "INFO", "warning": "WARNING", "error": "ERROR",
              "exception": "ERROR", "critical": "CRITICAL"}
    found: set[tuple[str, str]] = set()
    for path in Path(integration_events.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in levels and isinstance(node.func.value, ast.Name)
                    and node.func.value.id == "logger" and node.args
                    and isinstance(node.args[0], ast.Constant)):
                continue
            words: list[str] = []
            for word in str(node.args[0].value).split():
                if "%" in word or "=" in word:
                    break
                words.append(word)
            found.add((levels[node.func.attr], " ".join(words).rstrip(":")))
    return found


def test_docs_logging_lists_every_record_of_the_integration_events_logger() -> None:
    import re
    from pathlib import Path

    from django.conf import settings

    text = (Path(settings.BASE_DIR) / "docs" / "logging.md").read_text()
    documented = set(re.findall(r"^\| (DEBUG|INFO|WARNING|ERROR) \| `([^`]+)` \|", text, re.M))
    logged = _logged_in_package()
    assert ("ERROR", "message failed") in logged and len(logged) > 10
    assert logged - documented == set(), "logged but not in docs/logging.md's table"
    assert documented - logged == set(), "in docs/logging.md's table but no longer logged"


def test_docs_logging_example_config_prints_retries_with_level_and_time() -> None:
    """The LOGGING block of docs/logging.md, applied in a fresh interpreter: INFO from
    integration_events and django-q with time and level; other libraries' INFO stays out."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    from django.conf import settings

    text = (Path(settings.BASE_DIR) / "docs" / "logging.md").read_text()
    block = re.search(r"```python\n(LOGGING = .*?)```", text, re.S)
    assert block, "docs/logging.md has no LOGGING example"
    script = block.group(1) + (
        "import logging, logging.config\n"
        "logging.config.dictConfig(LOGGING)\n"
        "logging.getLogger('integration_events').info('message retrying message_id=1')\n"
        "logging.getLogger('django-q').info('Q Cluster x running.')\n"
        "logging.getLogger('somelib').info('chatter')\n"
        "logging.getLogger('somelib').warning('trouble')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60, check=True)
    lines = result.stderr.splitlines()
    stamp = r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} "
    assert len(lines) == 3, lines
    assert re.match(stamp + r"INFO integration_events \d+ message retrying message_id=1$",
                    lines[0]), lines
    assert re.match(stamp + r"INFO django-q \d+ Q Cluster x running\.$", lines[1]), lines
    assert re.match(stamp + r"WARNING somelib \d+ trouble$", lines[2]), lines
