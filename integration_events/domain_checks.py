"""System checks for domain events (ids integration_events.E030-E039).

A domain event stays inside the app (bounded context) that declares it: its handlers live in
that app, and only that app raises it. Integration events and domain events are not
interchangeable: one is published to the outbox, the other raised in process.

The call-site checks (E032-E034) read the source of your own apps (not installed packages)
and look at calls whose argument is written as a constructor, e.g.
``raise_event(UserDeleted(...))``; an event built earlier and passed by name is caught at run
time instead (raise_event() and publish() refuse the wrong kind).
"""

from __future__ import annotations

import ast
import inspect
import os
import sys
import typing
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from django.apps import AppConfig, apps
from django.core import checks

from .domain import DomainEvent, all_domain_handlers
from .events import IntegrationEvent
from .registry import all_subscriptions

RAISE_FUNCTIONS = ("raise_event",)
PUBLISH_FUNCTIONS = ("publish", "publish_many")


def _app_label(module: str) -> str | None:
    config = apps.get_containing_app_config(module)
    return config.label if config is not None else None


@checks.register(checks.Tags.models)
def check_domain_handlers(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """E030: a handler lives in another app than its event; E031: outside any app."""
    errors: list[checks.CheckMessage] = []
    for entry in all_domain_handlers():
        event = entry.event_type
        event_app = _app_label(event.__module__)
        handler_app = _app_label(entry.handler.__module__)
        if event_app is None or handler_app is None:
            what = (f"its event {event.__module__}.{event.__qualname__}" if event_app is None
                    else "the handler")
            errors.append(checks.Error(
                f"Domain handler {entry.dotted_path}: {what} is not inside an installed app, "
                "so the context it belongs to is unknown.",
                hint="Declare domain events in an app's domain_events.py and their handlers "
                "in the same app's subscribers.py.",
                obj=entry.handler,
                id="integration_events.E031",
            ))
        elif event_app != handler_app:
            errors.append(checks.Error(
                f"Domain handler {entry.dotted_path} (app {handler_app!r}) handles "
                f"{event.__qualname__} of app {event_app!r}: domain events do not cross "
                "contexts.",
                hint=f"Move the handler into {event_app!r}, or have a handler in {event_app!r} "
                f"publish an integration event that {handler_app!r} subscribes to.",
                obj=entry.handler,
                id="integration_events.E030",
            ))
    errors += _subscribers_taking_domain_events()
    return errors


def _subscribers_taking_domain_events() -> list[checks.CheckMessage]:
    """E035: an @subscriber annotated with a domain event (which never reaches the outbox)."""
    errors: list[checks.CheckMessage] = []
    for sub in all_subscriptions():
        try:
            params = list(inspect.signature(sub.handler).parameters.values())
            hint = typing.get_type_hints(sub.handler).get(params[0].name) if params else None
        except Exception:  # unresolvable annotations are reported by E012
            continue
        if isinstance(hint, type) and issubclass(hint, DomainEvent):
            errors.append(checks.Error(
                f"Subscriber {sub.dotted_path} takes {hint.__qualname__}, a domain event: "
                "domain events are raised in process and never delivered to subscribers.",
                hint=f"Handle it with @domain_handler in {hint.__module__.split('.')[0]!r}, or "
                f"subscribe to the integration event of topic {sub.topic!r}.",
                obj=sub.handler,
                id="integration_events.E035",
            ))
    return errors


@checks.register(checks.Tags.models)
def check_event_call_sites(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """E032-E034: raise_event()/publish() called with the wrong kind of event, or a domain
    event raised outside the app that declares it."""
    errors: list[checks.CheckMessage] = []
    for config in _own_apps(app_configs):
        for path, module_name, is_package in _modules_of(config):
            errors += _check_module(config, path, module_name, is_package)
    return errors


def _own_apps(app_configs: Any) -> list[AppConfig]:
    configs = app_configs if app_configs is not None else apps.get_app_configs()
    prefixes = {Path(p).resolve() for p in (sys.prefix, sys.base_prefix)}
    return [
        c for c in configs
        if not c.name.startswith(("django.", "integration_events"))
        and not any(Path(c.path).resolve().is_relative_to(p) for p in prefixes)
    ]


def _modules_of(config: AppConfig) -> Iterator[tuple[Path, str, bool]]:
    """The app's Python modules, without migrations, caches and hidden directories (which
    are not even walked: an app at the project root may hold a virtualenv)."""
    root = Path(config.path)
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                         and d not in ("migrations", "__pycache__", "node_modules"))
        for name in sorted(n for n in names if n.endswith(".py")):
            path = Path(folder) / name
            parts = path.relative_to(root).with_suffix("").parts
            is_package = parts[-1] == "__init__"
            if is_package:
                parts = parts[:-1]
            yield path, ".".join((config.name, *parts)), is_package


def _check_module(config: AppConfig, path: Path, module_name: str,
                  is_package: bool) -> list[checks.CheckMessage]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (OSError, SyntaxError, ValueError):
        return []  # a module that does not parse fails loudly on import, not here
    names = _namespace(module_name, is_package, tree)
    errors: list[checks.CheckMessage] = []
    for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call)):
        function = _called_name(call.func)
        if function not in RAISE_FUNCTIONS + PUBLISH_FUNCTIONS:
            continue
        where = f"{path.name}:{call.lineno}"
        for event_class in _constructed_classes(call, names):
            errors += _check_call(config, function, event_class, where, module_name)
    return errors


def _check_call(config: AppConfig, function: str, event_class: type, where: str,
                module_name: str) -> list[checks.CheckMessage]:
    name = event_class.__qualname__
    if function in RAISE_FUNCTIONS and issubclass(event_class, IntegrationEvent):
        return [checks.Error(
            f"{module_name} ({where}) calls raise_event({name}(...)), but {name} is an "
            "integration event.",
            hint=f"publish({name}(...)) delivers it to other contexts after commit; "
            "raise_event() takes DomainEvent subclasses.",
            obj=event_class, id="integration_events.E032",
        )]
    if function in PUBLISH_FUNCTIONS and issubclass(event_class, DomainEvent):
        return [checks.Error(
            f"{module_name} ({where}) calls {function}() with {name}, a domain event.",
            hint=f"raise_event({name}(...)) runs its handlers in this transaction; to tell "
            "other contexts, publish an integration event (e.g. from a domain handler).",
            obj=event_class, id="integration_events.E033",
        )]
    owner = _app_label(event_class.__module__)
    if function in RAISE_FUNCTIONS and issubclass(event_class, DomainEvent) \
            and owner is not None and owner != config.label:
        return [checks.Error(
            f"{module_name} ({where}) raises {name}, a domain event of app {owner!r}: "
            "domain events do not cross contexts.",
            hint=f"Call a service of {owner!r} through an integration event, or declare a "
            f"domain event of {config.label!r}.",
            obj=event_class, id="integration_events.E034",
        )]
    return []


def _called_name(func: ast.expr) -> str:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return ""


def _constructed_classes(call: ast.Call, names: dict[str, Any]) -> Iterator[type]:
    """Event classes instantiated directly in the call's first argument (or in the list
    literal given to publish_many)."""
    if not call.args:
        return
    first = call.args[0]
    candidates = first.elts if isinstance(first, ast.List | ast.Tuple | ast.Set) else [first]
    for node in candidates:
        if isinstance(node, ast.Call):
            value = _resolve(node.func, names)
            if isinstance(value, type) and issubclass(value, DomainEvent | IntegrationEvent):
                yield value


def _resolve(node: ast.expr, names: dict[str, Any]) -> Any:
    if isinstance(node, ast.Name):
        return names.get(node.id)
    if isinstance(node, ast.Attribute):
        owner = _resolve(node.value, names)
        return getattr(owner, node.attr, None) if owner is not None else None
    return None


def _namespace(module_name: str, is_package: bool, tree: ast.Module) -> dict[str, Any]:
    """What the module's names refer to: its globals when it is imported, otherwise what
    its top-level imports bind (looked up among modules already imported, never importing
    anything from a check)."""
    module = sys.modules.get(module_name)
    if module is not None:
        return dict(vars(module))
    names: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            base = _absolute(module_name, is_package, node)
            source = sys.modules.get(base)
            for alias in node.names:
                value = getattr(source, alias.name, None) if source is not None else None
                if value is None:
                    value = sys.modules.get(f"{base}.{alias.name}")
                if value is not None:
                    names[alias.asname or alias.name] = value
        elif isinstance(node, ast.Import):
            for alias in node.names:
                bound = alias.asname or alias.name.split(".")[0]
                target = alias.name if alias.asname else bound
                found: ModuleType | None = sys.modules.get(target)
                if found is not None:
                    names[bound] = found
    return names


def _absolute(module_name: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    parts = module_name.split(".")
    package = parts[: len(parts) - node.level + (1 if is_package else 0)]
    return ".".join([*package, *([node.module] if node.module else [])])
