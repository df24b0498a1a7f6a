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
from integration_events.tasks import enqueue_process
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
    enqueue_process("default")
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
