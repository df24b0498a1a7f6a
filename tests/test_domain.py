"""Domain events: raise_event() runs handlers synchronously in the caller's transaction, in
registration order; a failing handler rolls the operation back; the wrong kind of event is
refused at run time and by the system checks."""

from __future__ import annotations

import contextlib
import importlib
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.db.transaction import TransactionManagementError
from pydantic import ValidationError

import integration_events
from integration_events import DomainEvent, IntegrationEvent, domain_handler, raise_event
from integration_events.domain import (
    DomainEventError,
    capture_domain_events,
    forget_domain_handler,
    handlers_for,
)
from integration_events.domain_checks import check_domain_handlers, check_event_call_sites
from integration_events.exceptions import IntegrationEventsError
from integration_events.models import PublishedMessage
from integration_events.publisher import publish
from tests.eventapp.domain_events import ProbeCleared, ProbeNoted
from tests.eventapp.events import ProbeHappened
from tests.eventapp.models import Delivery
from tests.eventapp.topics import ProbeTopics

ROOT = Path(__file__).resolve().parent.parent
MESSAGE_ID = "00000000-0000-0000-0000-000000000001"


@pytest.fixture
def handle() -> Iterator[Callable[[Callable[..., Any]], Callable[..., Any]]]:
    """Register domain handlers for one test: handle(func)."""
    registered: list[Callable[..., Any]] = []

    def register(func: Callable[..., Any]) -> Callable[..., Any]:
        registered.append(func)
        return domain_handler(func)

    yield register
    for func in registered:
        forget_domain_handler(func)


def _delivery(n: int, group: str = "domain") -> None:
    Delivery.objects.create(message_id=MESSAGE_ID, group=group, n=n, attempt=1)


# --- running handlers ---------------------------------------------------------------------

@pytest.mark.django_db
def test_handlers_run_before_raise_event_returns_in_registration_order(handle: Any) -> None:
    calls: list[str] = []

    def second_defined_first_registered(event: ProbeNoted) -> None:
        calls.append(f"b{event.n}")

    def first_defined_second_registered(event: ProbeNoted) -> None:
        calls.append(f"a{event.n}")

    def other_event(event: ProbeCleared) -> None:
        calls.append("cleared")

    handle(second_defined_first_registered)
    handle(first_defined_second_registered)
    handle(other_event)
    assert [h.handler for h in handlers_for(ProbeNoted)] == [
        second_defined_first_registered, first_defined_second_registered,
    ]
    with transaction.atomic():
        raise_event(ProbeNoted(n=1))
        assert calls == ["b1", "a1"]  # synchronous: done before raise_event returned
    assert calls == ["b1", "a1"]  # the class is the key: ProbeCleared's handler did not run


@pytest.mark.django_db
def test_an_event_nobody_handles_is_fine(handle: Any) -> None:
    with transaction.atomic(), capture_domain_events() as raised:
        raise_event(ProbeCleared(n=3))
    assert raised == [ProbeCleared(n=3)]


@pytest.mark.django_db(transaction=True)
def test_handlers_write_in_the_callers_transaction(handle: Any) -> None:
    def record(event: ProbeNoted) -> None:
        _delivery(event.n)
        publish(ProbeHappened(n=event.n))

    handle(record)
    with transaction.atomic():
        _delivery(0, group="operation")
        raise_event(ProbeNoted(n=1))
    assert sorted(Delivery.objects.values_list("group", "n")) == [("domain", 1),
                                                                    ("operation", 0)]
    assert PublishedMessage.objects.filter(topic=ProbeTopics.PROBE_HAPPENED).count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_failing_handler_rolls_the_operation_back_and_publishes_nothing(handle: Any) -> None:
    ran: list[str] = []

    def publish_it(event: ProbeNoted) -> None:
        _delivery(event.n)
        publish(ProbeHappened(n=event.n))
        ran.append("publish_it")

    def refuse(event: ProbeNoted) -> None:
        ran.append("refuse")
        raise ValueError(f"probe {event.n} refused")

    def never(event: ProbeNoted) -> None:
        ran.append("never")

    handle(publish_it)
    handle(refuse)
    handle(never)
    with pytest.raises(ValueError, match="probe 7 refused"), transaction.atomic():
        _delivery(0, group="operation")
        raise_event(ProbeNoted(n=7))
    assert ran == ["publish_it", "refuse"]  # the handlers after the failing one do not run
    assert Delivery.objects.count() == 0
    assert PublishedMessage.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_catching_the_handlers_exception_does_not_commit_the_operation(handle: Any) -> None:
    def refuse(event: ProbeNoted) -> None:
        _delivery(event.n)
        raise ValueError("no")

    handle(refuse)
    with transaction.atomic():
        _delivery(0, group="operation")
        with contextlib.suppress(ValueError):
            raise_event(ProbeNoted(n=1))
        # The transaction is marked for rollback: Django refuses further queries in it...
        with pytest.raises(TransactionManagementError):
            Delivery.objects.count()
    # ...and rolls it back at the end of the block.
    assert Delivery.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_a_nested_atomic_block_lets_the_caller_recover(handle: Any) -> None:
    def refuse(event: ProbeNoted) -> None:
        _delivery(event.n)
        raise ValueError("no")

    handle(refuse)
    with transaction.atomic():
        _delivery(0, group="operation")
        try:
            with transaction.atomic():
                raise_event(ProbeNoted(n=1))
        except ValueError:
            _delivery(2, group="fallback")
    assert sorted(Delivery.objects.values_list("group", "n")) == [("fallback", 2),
                                                                    ("operation", 0)]


@pytest.mark.django_db(transaction=True)
def test_raising_outside_a_transaction_is_an_error_and_runs_nothing(handle: Any) -> None:
    ran: list[int] = []

    def record(event: ProbeNoted) -> None:
        ran.append(event.n)

    handle(record)
    with pytest.raises(DomainEventError, match=r"outside a transaction.*transaction\.atomic"):
        raise_event(ProbeNoted(n=1))
    assert ran == []
    with transaction.atomic():
        raise_event(ProbeNoted(n=2))
    assert ran == [2]


@pytest.mark.django_db
def test_the_wrong_kind_of_event_is_refused_at_run_time() -> None:
    with transaction.atomic():
        with pytest.raises(DomainEventError, match=r"ProbeHappened, an integration event.*"
                           r"publish\(\)"):
            raise_event(ProbeHappened(n=1))  # type: ignore[arg-type]
        with pytest.raises(DomainEventError, match="takes a DomainEvent instance, got dict"):
            raise_event({"n": 1})  # type: ignore[arg-type]
        with pytest.raises(IntegrationEventsError, match="ProbeNoted"):
            publish(ProbeNoted(n=1))  # type: ignore[arg-type]
    assert PublishedMessage.objects.count() == 0


@pytest.mark.django_db
def test_capture_domain_events_nests_and_stops_at_the_end() -> None:
    with transaction.atomic(), capture_domain_events() as outer:
        raise_event(ProbeNoted(n=1))
        with capture_domain_events() as inner:
            raise_event(ProbeCleared(n=2))
        raise_event(ProbeNoted(n=3))
    with transaction.atomic():
        raise_event(ProbeNoted(n=4))
    assert inner == [ProbeCleared(n=2)]
    assert outer == [ProbeNoted(n=1), ProbeCleared(n=2), ProbeNoted(n=3)]


# --- declaring events and handlers --------------------------------------------------------

def test_a_domain_event_is_frozen_strict_and_has_no_topic() -> None:
    event = ProbeNoted(n=1)
    with pytest.raises(ValidationError):
        event.n = 2  # type: ignore[misc]
    with pytest.raises(ValidationError, match="extra"):
        ProbeNoted(n=1, surprise=True)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="no topic"):
        class WithTopic(DomainEvent, topic=ProbeTopics.PROBE_HAPPENED):  # type: ignore[call-arg]
            n: int
    with pytest.raises(TypeError, match="both DomainEvent and IntegrationEvent"):
        class Both(DomainEvent, IntegrationEvent):
            n: int


def test_the_public_names_are_importable_from_the_package() -> None:
    from integration_events import domain

    assert integration_events.DomainEvent is domain.DomainEvent
    assert integration_events.raise_event is domain.raise_event
    assert integration_events.domain_handler is domain.domain_handler


def _no_annotation(event):  # type: ignore[no-untyped-def]
    pass


def _integration(event: ProbeHappened) -> None:
    pass


def _two(event: ProbeNoted, extra: int) -> None:
    pass


async def _async(event: ProbeNoted) -> None:
    pass


def _base(event: DomainEvent) -> None:
    pass


@pytest.mark.parametrize(("func", "message"), [
    (_no_annotation, "must annotate its parameter with a DomainEvent subclass"),
    (_integration, r"ProbeHappened, an integration event: subscribe to it with @subscriber"),
    (_two, "must take one parameter"),
    (_async, "is async"),
    (_base, "annotated with DomainEvent itself"),
])
def test_a_bad_handler_is_refused_when_its_module_loads(func: Any, message: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=message):
        domain_handler(func)
    assert all(h.handler is not func for h in handlers_for(ProbeNoted))


def test_an_unresolvable_annotation_names_the_fix() -> None:
    namespace: dict[str, Any] = {"__name__": "tests.eventapp.generated"}
    exec("from __future__ import annotations\ndef late(event: Missing) -> None: ...", namespace)
    with pytest.raises(ImproperlyConfigured, match="TYPE_CHECKING"):
        domain_handler(namespace["late"])


def test_reloading_a_module_replaces_its_handlers_in_place(tmp_path: Path,
                                                           monkeypatch: Any) -> None:
    (tmp_path / "reloaded_handlers.py").write_text(textwrap.dedent("""\
        from integration_events import domain_handler
        from tests.eventapp.domain_events import ProbeNoted


        @domain_handler
        def one(event: ProbeNoted) -> None: ...
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("reloaded_handlers")
    try:
        importlib.reload(module)
        assert [h.dotted_path for h in handlers_for(ProbeNoted)] == ["reloaded_handlers.one"]
        assert handlers_for(ProbeNoted)[0].handler is module.one
    finally:
        forget_domain_handler(module.one)
        sys.modules.pop("reloaded_handlers", None)


def test_handlers_in_subscribers_modules_are_autodiscovered_at_startup() -> None:
    """A fresh process that imports no subscribers module itself finds the samples'
    domain handlers, in the order of their definition."""
    script = textwrap.dedent("""\
        import django
        django.setup()
        from integration_events.domain import all_domain_handlers
        for h in all_domain_handlers():
            print(h.event_type.__module__, h.event_type.__qualname__, h.dotted_path)
        """)
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "project.settings",
           "IE_VAR_DIR": os.environ.get("IE_VAR_DIR", str(ROOT / "var"))}
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "equipment.domain_events EquipmentStatusSet " \
        "equipment.subscribers.count_status_change" in lines
    status = [line.split()[2] for line in lines if " EquipmentStatusSet " in line]
    assert status == ["equipment.subscribers.count_status_change",
                      "equipment.subscribers.announce_status_change"]
    apps_with_handlers = {line.split(".")[0] for line in lines}
    assert apps_with_handlers == {"accounts", "equipment", "files"}


# --- system checks ------------------------------------------------------------------------

def _handler_in(module: str) -> Callable[..., Any]:
    def elsewhere(event: ProbeNoted) -> None: ...
    elsewhere.__module__ = module
    return elsewhere


def _ids(messages: list[Any]) -> list[str]:
    return [m.id for m in messages]


def test_handlers_of_the_events_own_app_pass(handle: Any) -> None:
    handle(_handler_in("tests.eventapp.subscribers"))
    assert check_domain_handlers() == []


def test_a_handler_in_another_app_is_an_error(handle: Any) -> None:
    handle(_handler_in("accounts.subscribers"))
    [error] = check_domain_handlers()
    assert error.id == "integration_events.E030"
    assert "(app 'accounts') handles ProbeNoted of app 'eventapp'" in error.msg
    assert "publish an integration event" in (error.hint or "")


def test_a_handler_outside_every_app_is_an_error(handle: Any) -> None:
    handle(_handler_in("somewhere.else"))
    assert _ids(check_domain_handlers()) == ["integration_events.E031"]


def test_a_subscriber_taking_a_domain_event_is_an_error(temp_subscriber: Any) -> None:
    @temp_subscriber(ProbeTopics.LONELY_HAPPENED, group="domain-probe")
    def confused(event: ProbeNoted) -> None: ...

    errors = [e for e in check_domain_handlers() if e.id == "integration_events.E035"]
    assert len(errors) == 1
    assert "ProbeNoted, a domain event" in errors[0].msg


BAD_CALLS = '''\
from integration_events import publish, publish_many, raise_event
from tests.eventapp import events
from tests.eventapp.domain_events import ProbeNoted
from tests.eventapp.events import ProbeHappened


def wrong() -> None:
    raise_event(ProbeHappened(n=1))
    publish(ProbeNoted(n=1))
    publish_many([events.ProbeHappened(n=1), ProbeNoted(n=2)])
    raise_event(ProbeNoted(n=3))


def right() -> None:
    publish(ProbeHappened(n=1))
    publish_many([events.ProbeHappened(n=1)])
    event = ProbeNoted(n=4)
    raise_event(event)  # a name, not a constructor: refused at run time if wrong
'''


def test_call_sites_with_the_wrong_kind_or_another_apps_event_are_errors(tmp_path: Path) -> None:
    package = tmp_path / "otherapp"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "services.py").write_text(BAD_CALLS)
    (package / "migrations").mkdir()
    (package / "migrations" / "0001_initial.py").write_text(BAD_CALLS)  # not read
    (package / ".venv").mkdir()
    (package / ".venv" / "lib.py").write_text(BAD_CALLS)  # not even walked
    config = SimpleNamespace(name="otherapp", label="otherapp", path=str(package))
    errors = check_event_call_sites(app_configs=[config])
    assert [(e.id, e.msg.split(" (")[1].split(")")[0]) for e in errors] == [
        ("integration_events.E032", "services.py:8"),
        ("integration_events.E033", "services.py:9"),
        ("integration_events.E033", "services.py:10"),
        ("integration_events.E034", "services.py:11"),
    ]
    assert "raise_event(ProbeHappened(...)), but ProbeHappened is an integration event" \
        in errors[0].msg
    assert "ProbeNoted, a domain event of app 'eventapp'" in errors[3].msg


def test_the_same_calls_inside_the_owning_app_raise_only_the_kind_errors(
        tmp_path: Path) -> None:
    package = tmp_path / "eventapp_copy"
    package.mkdir()
    (package / "services.py").write_text(BAD_CALLS)
    config = SimpleNamespace(name="eventapp_copy", label="eventapp", path=str(package))
    assert _ids(check_event_call_sites(app_configs=[config])) == [
        "integration_events.E032", "integration_events.E033", "integration_events.E033",
    ]


def test_the_project_passes_the_domain_checks() -> None:
    assert check_domain_handlers() == []
    assert check_event_call_sites() == []
