"""manage.py add_integration_event and add_domain_event, run for real on temporary apps in a
subprocess (so the generated modules are imported by a fresh Django), then linted with ruff,
type-checked with mypy and checked with Django's system checks."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from integration_events.management.codegen import (
    SourceFile,
    kebab,
    parse_properties,
)

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
RUFF = Path(sys.executable).with_name("ruff")

GADGETS_TOPICS = '''\
"""Gadget topics."""

from __future__ import annotations

from enum import StrEnum


class GadgetsTopics(StrEnum):
    """Everything gadgets publish."""

    GADGET_ASSEMBLED = "gadgets.gadget-assembled"
'''

GADGETS_EVENTS = '''\
"""Gadget events (hand-written; the generator must leave this alone)."""

from __future__ import annotations

from datetime import datetime

from integration_events import IntegrationEvent

from .topics import GadgetsTopics

# A comment the generator must keep.


class GadgetAssembled(IntegrationEvent, topic=GadgetsTopics.GADGET_ASSEMBLED):
    serial: str
    assembled_at: datetime
'''

GIZMOS_SUBSCRIBERS = '''\
"""Gizmo handlers."""

from __future__ import annotations

from gadgets.events import GadgetAssembled
from gadgets.topics import GadgetsTopics
from integration_events import subscriber


@subscriber(GadgetsTopics.GADGET_ASSEMBLED)
def count_gadget(event: GadgetAssembled) -> None:
    """Hand-written handler."""
'''


def _app(root: Path, label: str, files: dict[str, str]) -> Path:
    package = root / label
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "apps.py").write_text(textwrap.dedent(f"""\
        from django.apps import AppConfig


        class Config(AppConfig):
            name = "{label}"
            default_auto_field = "django.db.models.BigAutoField"
        """))
    for name, text in files.items():
        (package / name).write_text(text)
    return package


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """Three apps on a temporary path: gadgets (topics and events exist), gizmos (a
    subscribers module exists), bare (nothing but apps.py)."""
    _app(tmp_path, "gadgets", {"topics.py": GADGETS_TOPICS, "events.py": GADGETS_EVENTS})
    _app(tmp_path, "gizmos", {"subscribers.py": GIZMOS_SUBSCRIBERS})
    _app(tmp_path, "bare", {})
    (tmp_path / "gen_settings.py").write_text(textwrap.dedent("""\
        from tests.settings import *  # noqa: F403
        from tests.settings import INSTALLED_APPS

        INSTALLED_APPS = [*INSTALLED_APPS, "gadgets", "gizmos", "bare"]
        """))
    # ruff with the repository's rules, and both trees first-party (as in a real project).
    config = (ROOT / "pyproject.toml").read_text()
    ruff = config[config.index("[tool.ruff]"):config.index("[tool.mypy]")]
    ruff = ruff.replace("[tool.ruff]\n", f'[tool.ruff]\nsrc = [".", "{ROOT}"]\n', 1)
    (tmp_path / "pyproject.toml").write_text(ruff)
    return tmp_path


def manage(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "gen_settings",
        "PYTHONPATH": f"{project}{os.pathsep}{ROOT}",
        "IE_SQLITE_PATH": str(project / "db.sqlite3"),
        "IE_VAR_DIR": str(project / "var"),
    }
    return subprocess.run([PYTHON, str(ROOT / "manage.py"), *args], cwd=project, env=env,
                          capture_output=True, text=True, timeout=120)


def generate(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    result = manage(project, "add_integration_event", *args)
    assert result.returncode == 0, result.stderr
    return result


def generate_domain(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    result = manage(project, "add_domain_event", *args)
    assert result.returncode == 0, result.stderr
    return result


def ruff(project: Path, *paths: Path) -> None:
    result = subprocess.run([str(RUFF), "check", "--no-cache", *map(str, paths)], cwd=project,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def run_python(project: Path, code: str) -> str:
    # SQLite in the project's directory: a block that opens a transaction needs a database
    # that exists, whatever IE_DB the suite runs with.
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "gen_settings",
           "PYTHONPATH": f"{project}{os.pathsep}{ROOT}", "IE_VAR_DIR": str(project / "var"),
           "IE_DB": "sqlite", "IE_SQLITE_PATH": str(project / "db.sqlite3")}
    script = "import django\ndjango.setup()\n" + textwrap.dedent(code)
    result = subprocess.run([PYTHON, "-c", script], cwd=project, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_adds_to_existing_modules_with_a_handler_in_another_app(project: Path) -> None:
    result = generate(
        project, "GadgetShipped", "--app", "gadgets", "--aggregate", "Gadget",
        "--properties", "gadget_id:UUID,serial:str,weight:Decimal,shipped_on:date,"
        "tags:list[str],note:str | None", "--handler-app", "gizmos",
    )
    assert "gadgets.gadget-shipped" in result.stdout

    topics = (project / "gadgets/topics.py").read_text()
    events = (project / "gadgets/events.py").read_text()
    subs = (project / "gizmos/subscribers.py").read_text()
    # What was there is still there, unchanged and in place.
    assert topics.startswith(GADGETS_TOPICS)
    assert topics.endswith('    GADGET_SHIPPED = "gadgets.gadget-shipped"\n')
    assert "# A comment the generator must keep." in events
    assert GADGETS_EVENTS.split("# A comment")[1] in events
    assert "from datetime import date, datetime\n" in events
    assert "from decimal import Decimal\n" in events
    assert "from uuid import UUID\n" in events
    assert "class GadgetShipped(IntegrationEvent, topic=GadgetsTopics.GADGET_SHIPPED):" in events
    assert "    note: str | None = None\n" in events
    assert subs.startswith('"""Gizmo handlers."""')
    assert "def count_gadget(event: GadgetAssembled) -> None:" in subs
    assert "from gadgets.events import GadgetAssembled, GadgetShipped\n" in subs
    assert "from integration_events import MessageContext, subscriber\n" in subs
    assert "import logging\n" in subs
    assert "def on_gadget_shipped(event: GadgetShipped, context: MessageContext) -> None:" in subs
    assert "        raise\n" in subs

    ruff(project, project / "gadgets", project / "gizmos")
    check = manage(project, "check", "--fail-level", "WARNING")
    assert check.returncode == 0, check.stdout + check.stderr

    out = run_python(project, """
        import datetime, decimal, uuid
        from gadgets.events import GadgetShipped
        from gadgets.topics import GadgetsTopics
        from gizmos.subscribers import on_gadget_shipped
        from integration_events.registry import subscriptions
        subs = subscriptions(GadgetsTopics.GADGET_SHIPPED)
        assert list(subs) == ["gizmos"], subs
        assert subs["gizmos"].event_type is GadgetShipped
        assert subs["gizmos"].wants_context
        assert subs["gizmos"].handler is on_gadget_shipped
        event = GadgetShipped(gadget_id=uuid.uuid4(), serial="s1", weight=decimal.Decimal("1.5"),
                              shipped_on=datetime.date.today(), tags=["a"])
        assert GadgetShipped.model_validate_json(event.model_dump_json()) == event
        print(GadgetShipped.topic)
    """)
    assert out.strip() == "gadgets.gadget-shipped"


def test_creates_missing_modules_in_a_bare_app(project: Path) -> None:
    generate(project, "WidgetBuilt", "--app", "bare", "--aggregate", "Widget",
             "--properties", "widget_id:UUID,built_at:datetime,count:int,ok:bool")
    for name in ("topics.py", "events.py", "subscribers.py"):
        assert (project / "bare" / name).exists()
    topics = (project / "bare/topics.py").read_text()
    assert "class BareTopics(StrEnum):" in topics
    assert '    WIDGET_BUILT = "bare.widget-built"' in topics
    subs = (project / "bare/subscribers.py").read_text()
    assert "from .events import WidgetBuilt\n" in subs
    assert "from .topics import BareTopics\n" in subs
    assert "logger = logging.getLogger(__name__)" in subs
    ruff(project, project / "bare")
    check = manage(project, "check", "--fail-level", "WARNING")
    assert check.returncode == 0, check.stdout + check.stderr

    # A second event goes into the modules the first one created.
    generate(project, "WidgetScrapped", "--app", "bare", "--aggregate", "Widget",
             "--properties", "widget_id:UUID")
    ruff(project, project / "bare")
    run_python(project, """
        from bare.subscribers import on_widget_built, on_widget_scrapped
        from integration_events.checks import check_topics
        from integration_events.registry import subscriptions
        assert set(subscriptions("bare.widget-built")) == {"bare"}
        assert set(subscriptions("bare.widget-scrapped")) == {"bare"}
        bad = [m for m in check_topics() if "bare" in str(m.msg)]
        assert bad == [], bad
    """)


def test_topic_includes_the_aggregate_when_the_name_does_not(project: Path) -> None:
    result = generate(project, "PartAdded", "--app", "gadgets", "--aggregate", "Gadget",
                      "--properties", "part:str", "--no-handler")
    assert "gadgets.gadget.part-added" in result.stdout
    assert not (project / "gizmos/subscribers.py").read_text().count("on_part_added")
    assert not (project / "gadgets/subscribers.py").exists()
    ruff(project, project / "gadgets")


def test_generated_code_passes_mypy(project: Path) -> None:
    generate(project, "GadgetShipped", "--app", "gadgets", "--aggregate", "Gadget",
             "--properties", "gadget_id:UUID,note:str | None", "--handler-app", "gizmos")
    generate(project, "WidgetBuilt", "--app", "bare", "--aggregate", "Widget",
             "--properties", "widget_id:UUID,when:datetime")
    generate_domain(project, "GadgetPolished", "--app", "gadgets",
                    "--properties", "gadget_id:UUID,grit:int | None,at:datetime")
    generate_domain(project, "GizmoTuned", "--app", "gizmos", "--properties", "level:Decimal")
    (project / "mypy.ini").write_text(textwrap.dedent("""\
        [mypy]
        disallow_untyped_defs = True
        ignore_missing_imports = True
        follow_imports = silent
        plugins = mypy_django_plugin.main

        [mypy.plugins.django-stubs]
        django_settings_module = gen_settings
        """))
    env = {**os.environ, "MYPYPATH": f"{project}{os.pathsep}{ROOT}",
           "PYTHONPATH": f"{project}{os.pathsep}{ROOT}", "IE_VAR_DIR": str(project / "var")}
    result = subprocess.run(
        [PYTHON, "-m", "mypy", "--no-incremental", "--config-file", "mypy.ini",
         "-p", "gadgets", "-p", "gizmos", "-p", "bare"],
        cwd=project, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_refuses_duplicates_and_writes_nothing(project: Path) -> None:
    before = {p: p.read_text() for p in project.rglob("*.py")}
    for args, message in [
        (["GadgetAssembled", "--properties", "x:int"], "already"),
        (["GadgetAssembled", "--properties", "x:int", "--no-handler"], "already"),
    ]:
        result = manage(project, "add_integration_event", *args, "--app", "gadgets",
                        "--aggregate", "Gadget")
        assert result.returncode != 0
        assert message in result.stderr
    # A topic another app's event already declares.
    result = manage(project, "add_integration_event", "GadgetAssembled", "--app", "gadgets",
                    "--aggregate", "Gadget", "--properties", "x:int")
    assert "gadgets.gadget-assembled" in result.stderr
    assert {p: p.read_text() for p in project.rglob("*.py")} == before


def test_dry_run_prints_the_diff_and_writes_nothing(project: Path) -> None:
    before = {p: p.read_text() for p in project.rglob("*.py")}
    result = generate(project, "GadgetShipped", "--app", "gadgets", "--aggregate", "Gadget",
                      "--properties", "gadget_id:UUID", "--handler-app", "gizmos",
                      "--dry-run")
    assert '+    GADGET_SHIPPED = "gadgets.gadget-shipped"' in result.stdout
    assert "+class GadgetShipped(IntegrationEvent" in result.stdout
    assert "+def on_gadget_shipped(" in result.stdout
    assert "3 file(s) would change" in result.stdout
    assert {p: p.read_text() for p in project.rglob("*.py")} == before


# Validation runs in-process: it fails before anything is read or written.

@pytest.mark.parametrize(("name", "properties", "message"), [
    ("equipmentCreated", "a:int", "PascalCase"),
    ("Equipment_Created", "a:int", "PascalCase"),
    ("EquipmentCreated", "a:integer", "Allowed types: str, int, float, bool, UUID"),
    ("EquipmentCreated", "a:dict[str, int]", "Allowed types"),
    ("EquipmentCreated", "a", "has no type"),
    ("EquipmentCreated", "Name:str", "snake_case"),
    ("EquipmentCreated", "class:str", "keyword"),
    ("EquipmentCreated", "version:int", "reserved"),
    ("EquipmentCreated", "topic:str", "reserved"),
    ("EquipmentCreated", "a:int,a:str", "twice"),
    ("EquipmentCreated", " , ", "no property"),
])
def test_rejects_bad_input_saying_what_is_allowed(name: str, properties: str,
                                                   message: str) -> None:
    with pytest.raises(CommandError, match=message.replace("[", r"\[")):
        call_command("add_integration_event", name, app="equipment", aggregate="Equipment",
                     properties=properties, dry_run=True)


def test_rejects_unknown_and_foreign_apps() -> None:
    with pytest.raises(CommandError, match="not an installed app label.*equipment"):
        call_command("add_integration_event", "ThingHappened", app="nosuchapp",
                     aggregate="Thing", properties="a:int", dry_run=True)
    with pytest.raises(CommandError, match="installed package"):
        call_command("add_integration_event", "ThingHappened", app="auth",
                     aggregate="Thing", properties="a:int", dry_run=True)


def test_rejects_a_duplicate_of_a_sample_topic() -> None:
    with pytest.raises(CommandError, match="already"):
        call_command("add_integration_event", "EquipmentCreated", app="equipment",
                     aggregate="Equipment", properties="a:int", dry_run=True)


def test_parse_properties() -> None:
    props = parse_properties("a:UUID, b:list[int] ,c:datetime | None")
    assert [(p.name, p.annotation, p.optional) for p in props] == [
        ("a", "UUID", False), ("b", "list[int]", False), ("c", "datetime | None", True),
    ]
    assert props[0].imports == (("uuid", "UUID"),)
    assert kebab("EquipmentCheckedOut") == "equipment-checked-out"


def test_imports_are_merged_where_isort_wants_them(tmp_path: Path) -> None:
    path = tmp_path / "m.py"
    path.write_text('"""Doc."""\n\nfrom __future__ import annotations\n\nimport os\n'
                    "from uuid import UUID\n\nfrom .topics import T\n\nX = 1\n")
    source = SourceFile.load(path, (tmp_path,))
    source.ensure_import("datetime", "datetime")
    source.ensure_import("uuid", "uuid4")
    source.ensure_import("integration_events", "IntegrationEvent")
    source.ensure_import("topics", "T", level=1)
    assert source.text == (
        '"""Doc."""\n\nfrom __future__ import annotations\n\nimport os\n'
        "from datetime import datetime\nfrom uuid import UUID, uuid4\n\n"
        "from integration_events import IntegrationEvent\n\n"
        "from .topics import T\n\nX = 1\n"
    )


# --- add_domain_event ----------------------------------------------------------------------

def test_domain_event_and_handler_in_a_bare_app_run_in_the_transaction(project: Path) -> None:
    result = generate_domain(project, "WidgetPolished", "--app", "bare",
                             "--properties", "widget_id:UUID,grit:int,note:str | None")
    assert "Added domain event WidgetPolished and handler bare.subscribers.on_widget_polished" \
        in result.stdout
    events = (project / "bare/domain_events.py").read_text()
    subs = (project / "bare/subscribers.py").read_text()
    assert "from integration_events import DomainEvent\n" in events
    assert "class WidgetPolished(DomainEvent):" in events
    assert "    note: str | None = None\n" in events
    assert "from .domain_events import WidgetPolished\n" in subs
    assert "@domain_handler\ndef on_widget_polished(event: WidgetPolished) -> None:" in subs
    assert not (project / "bare/topics.py").exists()  # no topic for a domain event
    ruff(project, project / "bare")
    check = manage(project, "check", "--fail-level", "WARNING")
    assert check.returncode == 0, check.stdout + check.stderr

    # A second event goes into the modules the first one created.
    generate_domain(project, "WidgetScratched", "--app", "bare", "--properties", "depth:float")
    ruff(project, project / "bare")
    out = run_python(project, """
        import uuid
        from django.db import transaction
        from bare.domain_events import WidgetPolished, WidgetScratched
        from bare.subscribers import on_widget_polished, on_widget_scratched
        from integration_events import raise_event
        from integration_events.domain import capture_domain_events, handlers_for
        from integration_events.domain_checks import check_domain_handlers
        assert [h.handler for h in handlers_for(WidgetPolished)] == [on_widget_polished]
        assert [h.handler for h in handlers_for(WidgetScratched)] == [on_widget_scratched]
        assert check_domain_handlers() == []
        with transaction.atomic(), capture_domain_events() as raised:
            raise_event(WidgetPolished(widget_id=uuid.uuid4(), grit=240))
        print(type(raised[0]).__name__)
    """)
    assert out.strip() == "WidgetPolished"


def test_domain_handler_joins_an_existing_subscribers_module(project: Path) -> None:
    generate_domain(project, "GizmoTuned", "--app", "gizmos",
                    "--properties", "gizmo_id:UUID,level:Decimal")
    subs = (project / "gizmos/subscribers.py").read_text()
    assert subs.startswith('"""Gizmo handlers."""')
    assert "@subscriber" + GIZMOS_SUBSCRIBERS.split("@subscriber")[1] in subs  # left alone
    assert "from integration_events import domain_handler, subscriber\n" in subs
    assert "import logging\n" in subs
    ruff(project, project / "gizmos")
    check = manage(project, "check", "--fail-level", "WARNING")
    assert check.returncode == 0, check.stdout + check.stderr


def test_domain_event_refusals_write_nothing(project: Path) -> None:
    before = {p: p.read_text() for p in project.rglob("*.py")}
    # The name of an integration event of the same app: the two kinds keep distinct names.
    result = manage(project, "add_domain_event", "GadgetAssembled", "--app", "gadgets",
                    "--properties", "x:int")
    assert result.returncode != 0
    assert "an integration event" in result.stderr
    assert {p: p.read_text() for p in project.rglob("*.py")} == before
    generate_domain(project, "GadgetPolished", "--app", "gadgets", "--properties", "x:int",
                    "--no-handler")
    assert not (project / "gadgets/subscribers.py").exists()
    again = manage(project, "add_domain_event", "GadgetPolished", "--app", "gadgets",
                   "--properties", "x:int")
    assert again.returncode != 0
    assert "already defines GadgetPolished" in again.stderr


def test_domain_event_dry_run_prints_the_diff() -> None:
    from io import StringIO

    out = StringIO()
    call_command("add_domain_event", "EquipmentRepaired", app="equipment",
                 properties="equipment_id:UUID", dry_run=True, stdout=out)
    text = out.getvalue()
    assert "+class EquipmentRepaired(DomainEvent):" in text
    assert "+def on_equipment_repaired(event: EquipmentRepaired) -> None:" in text
    assert "2 file(s) would change" in text


@pytest.mark.parametrize(("name", "properties", "message"), [
    ("equipmentRepaired", "a:int", "PascalCase"),
    ("DomainEvent", "a:int", "base class"),
    ("EquipmentRepaired", "a:integer", "Allowed types"),
    ("EquipmentRepaired", "model_x:int", "reserved by DomainEvent"),
    ("EquipmentAdded", "a:int", "already defines EquipmentAdded"),
    ("EquipmentCreated", "a:int", "an integration event"),
])
def test_add_domain_event_rejects_bad_input(name: str, properties: str, message: str) -> None:
    with pytest.raises(CommandError, match=message):
        call_command("add_domain_event", name, app="equipment", properties=properties,
                     dry_run=True)
    with pytest.raises(CommandError, match="installed package"):
        call_command("add_domain_event", "ThingHappened", app="auth", properties="a:int",
                     dry_run=True)
