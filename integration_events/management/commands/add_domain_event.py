"""manage.py add_domain_event: scaffold a domain event class and its handler stub that pass
ruff, mypy and the system checks.

    manage.py add_domain_event EquipmentRetired --app equipment \\
        --properties "equipment_id:UUID,category:str" [--no-handler] [--dry-run]

A command of its own rather than a flag of add_integration_event: a domain event has no topic
(so no topics constant and no --aggregate to name one) and its handlers must live in its own
app (so no --handler-app); a flag would make half of the other command's options invalid.
The class goes at the end of the app's ``domain_events.py``, the handler at the end of its
``subscribers.py`` (autodiscovered), both created when missing.
"""

from __future__ import annotations

import keyword
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.apps import AppConfig
from django.core.management.base import BaseCommand, CommandError, CommandParser

from integration_events.management.codegen import (
    ALLOWED_TYPES_HELP,
    LINE_LENGTH,
    PASCAL_CASE,
    Property,
    SourceFile,
    check_compiles,
    ensure_logger,
    kebab,
    parse_properties,
    project_roots,
    report_written,
    resolve_app,
    write_or_show,
)

# DomainEvent adds no attributes of its own to pydantic's.
DOMAIN_RESERVED: frozenset[str] = frozenset()


@dataclass
class DomainPlan:
    """Everything the command would do."""

    files: list[SourceFile]
    event: str
    handler: str | None


class Command(BaseCommand):
    help = (
        "Add a domain event to an app: the event class (domain_events.py) and, unless "
        "--no-handler, a @domain_handler stub in the same app's subscribers.py. Edits existing "
        "files in place; --dry-run prints the change."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="Event class name, PascalCase and past tense, e.g. "
                            "EquipmentRetired.")
        parser.add_argument("--app", required=True,
                            help="Label of the app that raises and handles it.")
        parser.add_argument("--properties", required=True,
                            help='Comma-separated name:type, e.g. "equipment_id:UUID,name:str". '
                            f"Types: {ALLOWED_TYPES_HELP}.")
        parser.add_argument("--no-handler", action="store_true",
                            help="Do not generate a handler stub.")
        parser.add_argument("--dry-run", action="store_true",
                            help="Print the changes as a diff instead of writing them.")

    def handle(self, *args: Any, **options: Any) -> None:
        plan = self.plan(name=options["name"], app_label=options["app"],
                         properties=options["properties"], no_handler=options["no_handler"])
        changed = write_or_show(self, plan.files, options["dry_run"])
        if options["dry_run"]:
            return
        self.stdout.write(self.style.SUCCESS(
            f"Added domain event {plan.event}"
            + (f" and handler {plan.handler}" if plan.handler else "")
            + ". Raise it with raise_event() inside the transaction of the change it reports."
        ))
        report_written(self, changed)

    def plan(self, *, name: str, app_label: str, properties: str,
             no_handler: bool) -> DomainPlan:
        """Compute every edit (nothing is written here)."""
        if not PASCAL_CASE.match(name) or keyword.iskeyword(name):
            raise CommandError(
                f"event name {name!r} is not allowed: use PascalCase letters and digits, in the "
                "past tense (what happened), e.g. EquipmentRetired."
            )
        if name in ("DomainEvent", "IntegrationEvent"):
            raise CommandError(f"{name} is a base class; name your event")
        props = parse_properties(properties, base="DomainEvent", reserved=DOMAIN_RESERVED)
        app = resolve_app(app_label, "--app")
        roots = project_roots(app)
        app_dir = Path(app.path)
        integration = SourceFile.load(app_dir / "events.py", roots)
        if integration.original and integration.has_top_level(name):
            raise CommandError(
                f"{integration.path} already defines {name}, an integration event: give the "
                "domain event its own name (e.g. EquipmentStatusSet beside the integration "
                "event EquipmentStatusChanged), so that code says which kind it means"
            )
        events = SourceFile.load(app_dir / "domain_events.py", roots)
        self._add_event(events, app, name, props)
        files = [events]
        handler_name = None
        if not no_handler:
            handler_name = f"on_{kebab(name).replace('-', '_')}"
            subs = SourceFile.load(app_dir / "subscribers.py", roots)
            self._add_handler(subs, app, name, handler_name)
            files.append(subs)
        check_compiles(files)
        return DomainPlan(files, name,
                          f"{app.name}.subscribers.{handler_name}" if handler_name else None)

    def _add_event(self, events: SourceFile, app: AppConfig, name: str,
                   props: list[Property]) -> None:
        if not events.original:
            events.text = (f'"""Domain events of the {app.label} app: raised and handled '
                           'inside it, never seen by\nother apps."""\n')
        if events.has_top_level(name):
            raise CommandError(f"{events.path} already defines {name}; choose another name")
        events.ensure_import("__future__", "annotations")
        for module, member in sorted({imp for p in props for imp in p.imports}):
            events.ensure_import(module, member)
        events.ensure_import("integration_events", "DomainEvent")
        doc = '    """Raised when ... (describe what happened inside the app)."""'
        body = "\n".join(p.line() for p in props)
        events.append_block(f"class {name}(DomainEvent):\n{doc}\n\n{body}\n")

    def _add_handler(self, subs: SourceFile, app: AppConfig, name: str,
                     handler_name: str) -> None:
        if not subs.original:
            subs.text = f'"""Handlers of the {app.label} app."""\n'
        if subs.has_top_level(handler_name):
            raise CommandError(f"{subs.path} already defines {handler_name}")
        subs.ensure_import("__future__", "annotations")
        subs.ensure_import("integration_events", "domain_handler")
        subs.ensure_import("domain_events", name, level=1)
        ensure_logger(subs)
        signature = f"def {handler_name}(event: {name}) -> None:"
        if len(signature) > LINE_LENGTH:
            signature = f"def {handler_name}(\n    event: {name},\n) -> None:"
        subs.append_block(
            f"@domain_handler\n{signature}\n"
            f'    """Handle {name} (generated stub: replace the body).\n\n'
            "    Runs inside the transaction that raised the event, before it commits: database\n"
            "    writes here commit or roll back with that change. Raise to refuse the change\n"
            "    (it rolls back). To tell other apps, publish() an integration event here.\n"
            '    """\n'
            '    logger.info("domain event handled event=%s", type(event).__name__)\n'
        )
