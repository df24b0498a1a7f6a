"""manage.py add_integration_event: scaffold a topic constant, an event class and a
subscriber stub that pass ruff, mypy and the system checks.

    manage.py add_integration_event EquipmentCreated --app equipment --aggregate Equipment \\
        --properties "equipment_id:UUID,name:str,category:str" [--handler-app files] \\
        [--no-handler] [--dry-run]

Existing files are edited, never rewritten: the constant goes at the end of the app's topics
enum, the class and the handler at the end of their modules, and missing imports are merged
into the import block where isort (ruff's I001) expects them. Nothing is written unless every
change could be computed. The editing machinery is shared with add_domain_event
(``integration_events.management.codegen``).
"""

from __future__ import annotations

import ast
import keyword
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.apps import AppConfig
from django.core.management.base import BaseCommand, CommandError, CommandParser

from integration_events.checks import TOPIC_PATTERN
from integration_events.events import declarations
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
    pascal,
    project_roots,
    report_written,
    resolve_app,
    upper_snake,
    write_or_show,
)

# --- the command ---------------------------------------------------------------------------


@dataclass
class Plan:
    """Everything the command would do."""

    files: list[SourceFile]
    topic: str
    constant: str
    topics_class: str
    event: str
    handler: str | None


class Command(BaseCommand):
    help = (
        "Add an integration event to an app: the topic constant (topics.py), the event class "
        "(events.py) and, unless --no-handler, a subscriber stub (subscribers.py of the app or "
        "of --handler-app). Edits existing files in place; --dry-run prints the change."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="Event class name, PascalCase and past tense, e.g. "
                            "EquipmentCreated.")
        parser.add_argument("--app", required=True, help="Label of the app that publishes it.")
        parser.add_argument("--aggregate", required=True,
                            help="The aggregate it is about, PascalCase, e.g. Equipment.")
        parser.add_argument("--properties", required=True,
                            help='Comma-separated name:type, e.g. "equipment_id:UUID,name:str". '
                            f"Types: {ALLOWED_TYPES_HELP}.")
        parser.add_argument("--handler-app", help="Label of the app that gets the subscriber "
                            "stub (default: --app).")
        parser.add_argument("--no-handler", action="store_true",
                            help="Do not generate a subscriber stub.")
        parser.add_argument("--dry-run", action="store_true",
                            help="Print the changes as a diff instead of writing them.")

    def handle(self, *args: Any, **options: Any) -> None:
        plan = self.plan(
            name=options["name"], app_label=options["app"], aggregate=options["aggregate"],
            properties=options["properties"], handler_label=options["handler_app"],
            no_handler=options["no_handler"],
        )
        changed = write_or_show(self, plan.files, options["dry_run"])
        if options["dry_run"]:
            return
        self.stdout.write(self.style.SUCCESS(
            f"Added {plan.event} (topic {plan.topic!r}, {plan.topics_class}.{plan.constant})"
            + (f" and handler {plan.handler}" if plan.handler else "") + "."
        ))
        report_written(self, changed)

    # The plan is computed completely before anything is written.
    def plan(self, *, name: str, app_label: str, aggregate: str, properties: str,
             handler_label: str | None, no_handler: bool) -> Plan:
        if not PASCAL_CASE.match(name) or keyword.iskeyword(name):
            raise CommandError(
                f"event name {name!r} is not allowed: use PascalCase letters and digits, in the "
                "past tense (what happened), e.g. EquipmentCreated or UserDeleted."
            )
        if not PASCAL_CASE.match(aggregate):
            raise CommandError(f"aggregate {aggregate!r} is not allowed: use PascalCase, e.g. "
                               "Equipment.")
        if name == "IntegrationEvent":
            raise CommandError("IntegrationEvent is the base class; name your event")
        props = parse_properties(properties)
        app = resolve_app(app_label, "--app")
        if no_handler and handler_label:
            raise CommandError("--handler-app and --no-handler contradict each other")
        handler_app = None if no_handler else resolve_app(handler_label or app_label,
                                                        "--handler-app")

        module = app.label.replace("_", "-")
        event_part = kebab(name)
        if event_part.startswith(kebab(aggregate)):
            topic = f"{module}.{event_part}"
        else:
            topic = f"{module}.{kebab(aggregate)}.{event_part}"
        if not TOPIC_PATTERN.match(topic):
            raise CommandError(f"the topic would be {topic!r}, which breaks the naming "
                               "convention (kebab-case {module}.{event}); rename the app or event")
        constant = upper_snake(name)
        if topic in declarations():
            owner = declarations()[topic][0].dotted_path
            raise CommandError(f"topic {topic!r} already exists: {owner} declares it")

        roots = project_roots(app, handler_app)
        app_dir = Path(app.path)
        topics = SourceFile.load(app_dir / "topics.py", roots)
        topics_class = self._add_topic(topics, app, constant, topic)
        events = SourceFile.load(app_dir / "events.py", roots)
        self._add_event(events, app, name, aggregate, topics_class, constant, props)
        files = [topics, events]
        handler_name = None
        if handler_app is not None:
            target = Path(handler_app.path) / "subscribers.py"
            subs = SourceFile.load(target, roots)
            handler_name = f"on_{kebab(name).replace('-', '_')}"
            self._add_handler(subs, app, handler_app, name, topics_class, constant,
                              handler_name)
            files.append(subs)
        check_compiles(files)
        return Plan(files, topic, constant, topics_class, name,
                    f"{handler_app.name}.subscribers.{handler_name}" if handler_app else None)

    def _topics_enum(self, topics: SourceFile) -> ast.ClassDef | None:
        candidates = [
            node for node in topics.tree().body
            if isinstance(node, ast.ClassDef) and any(
                (isinstance(b, ast.Name) and b.id == "StrEnum")
                or (isinstance(b, ast.Attribute) and b.attr == "StrEnum")
                for b in node.bases
            )
        ]
        named = [c for c in candidates if c.name.endswith("Topics")]
        chosen = named or candidates
        return chosen[0] if chosen else None

    def _add_topic(self, topics: SourceFile, app: AppConfig, constant: str, topic: str) -> str:
        if not topics.original:
            topics.text = f'"""Topics the {app.label} app publishes."""\n'
        enum_class = self._topics_enum(topics)
        if enum_class is None:
            class_name = f"{pascal(app.label)}Topics"
            if topics.has_top_level(class_name):
                raise CommandError(f"{topics.path} defines {class_name}, but not as a StrEnum; "
                                   "make it one (class ...Topics(StrEnum)) and run again")
            topics.ensure_import("__future__", "annotations")
            topics.ensure_import("enum", "StrEnum")
            topics.append_block(f"class {class_name}(StrEnum):\n    {constant} = {topic!r}\n"
                                .replace("'", '"'))
            return class_name
        for node in enum_class.body:
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    if isinstance(target, ast.Name) and target.id == constant:
                        raise CommandError(f"{enum_class.name}.{constant} already exists in "
                                           f"{topics.path}; choose another event name")
                if isinstance(node.value, ast.Constant) and node.value.value == topic:
                    raise CommandError(f"topic {topic!r} is already in {topics.path} "
                                       f"({enum_class.name}); choose another event name")
        last = enum_class.body[-1]
        lines = topics.text.splitlines(keepends=True)
        end = last.end_lineno or last.lineno
        indent = " " * (enum_class.body[0].col_offset if enum_class.body else 4)
        if not lines[end - 1].endswith("\n"):
            lines[end - 1] += "\n"
        lines.insert(end, f'{indent}{constant} = "{topic}"\n')
        # A class whose only body was a docstring or "..." stays valid with the new member.
        topics.text = "".join(lines)
        return enum_class.name

    def _add_event(self, events: SourceFile, app: AppConfig, name: str, aggregate: str,
                   topics_class: str, constant: str, props: list[Property]) -> None:
        if not events.original:
            events.text = f'"""Integration events of the {app.label} app."""\n'
        if events.has_top_level(name):
            raise CommandError(f"{events.path} already defines {name}; choose another name")
        events.ensure_import("__future__", "annotations")
        for module, member in sorted({imp for p in props for imp in p.imports}):
            events.ensure_import(module, member)
        events.ensure_import("integration_events", "IntegrationEvent")
        events.ensure_import("topics", topics_class, level=1)
        header = f"class {name}(IntegrationEvent, topic={topics_class}.{constant}):"
        if len(header) > LINE_LENGTH:
            header = (f"class {name}(\n    IntegrationEvent, topic={topics_class}.{constant}\n"
                      "):")
        doc = f'    """Published when the {aggregate} aggregate ... (describe what happened)."""'
        body = "\n".join(p.line() for p in props)
        events.append_block(f"{header}\n{doc}\n\n{body}\n")

    def _add_handler(self, subs: SourceFile, app: AppConfig, handler_app: AppConfig,
                     name: str, topics_class: str, constant: str, handler_name: str) -> None:
        if not subs.original:
            subs.text = f'"""Subscribers of the {handler_app.label} app."""\n'
        if subs.has_top_level(handler_name):
            raise CommandError(f"{subs.path} already defines {handler_name}")
        subs.ensure_import("__future__", "annotations")
        subs.ensure_import("integration_events", "MessageContext")
        subs.ensure_import("integration_events", "subscriber")
        if handler_app.label == app.label:
            subs.ensure_import("events", name, level=1)
            subs.ensure_import("topics", topics_class, level=1)
        else:
            subs.ensure_import(f"{app.name}.events", name)
            subs.ensure_import(f"{app.name}.topics", topics_class)
        ensure_logger(subs)
        decorator = f"@subscriber({topics_class}.{constant})"
        signature = f"def {handler_name}(event: {name}, context: MessageContext) -> None:"
        if len(signature) > LINE_LENGTH:
            signature = (f"def {handler_name}(\n    event: {name}, context: MessageContext\n"
                         ") -> None:")
        subs.append_block(
            f"{decorator}\n{signature}\n"
            f'    """Handle {name} (generated stub: replace the body).\n\n'
            "    Database writes here commit together with the message's inbox status; put\n"
            "    effects outside the database (mail, files, HTTP) in transaction.on_commit().\n"
            "    Raise to have the message retried.\n"
            '    """\n'
            "    try:\n"
            "        logger.info(\n"
            '            "handling topic=%s message_id=%s group=%s attempt=%s",\n'
            "            context.topic, context.message_id, context.group, context.attempt,\n"
            "        )\n"
            "    except Exception:\n"
            "        logger.exception(\n"
            '            "handler failed topic=%s message_id=%s group=%s attempt=%s",\n'
            "            context.topic, context.message_id, context.group, context.attempt,\n"
            "        )\n"
            "        raise\n"
        )
