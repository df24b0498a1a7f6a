"""The sample contexts talk only through integration events: each may import another
context's ``topics`` and ``events`` modules and nothing else of it (not its
``domain_events``: those stay inside their context), holds no relation to
another context's models, and does not reach them through ``apps.get_model``."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.apps import apps
from django.conf import settings

CONTEXTS = ("accounts", "equipment", "files")
PUBLIC_MODULES = ("topics", "events")
ROOT = Path(settings.BASE_DIR)


@dataclass(frozen=True)
class Violation:
    path: str
    line: int
    what: str


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def _resolve(module: str, node: ast.ImportFrom) -> str:
    """The absolute module an ``import from`` names (relative ones included)."""
    if not node.level:
        return node.module or ""
    package = module.split(".")[: -node.level]
    return ".".join([*package, *([node.module] if node.module else [])])


def _allowed(own: str, target: str) -> bool:
    parts = target.split(".")
    if parts[0] not in CONTEXTS or parts[0] == own:
        return True
    return len(parts) >= 2 and parts[1] in PUBLIC_MODULES


def violations_in_source(own: str, module: str, source: str, path: str) -> list[Violation]:
    """Every cross-context import of a non-public module and every apps.get_model() of
    another context in ``source``."""
    found: list[Violation] = []
    tree = ast.parse(source, filename=path)
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, node)
            # "from files import services" imports files.services.
            targets = [base if base.count(".") else f"{base}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("get_model", "import_module", "import_string", "__import__") \
                    and node.args and isinstance(node.args[0], ast.Constant):
                arg = str(node.args[0].value)
                label = arg.split(".")[0]
                if label in CONTEXTS and label != own and not (
                    name != "get_model" and _allowed(own, arg)
                ):
                    found.append(Violation(path, node.lineno, f"{name}({arg!r})"))
            continue
        for target in targets:
            if not _allowed(own, target):
                found.append(Violation(path, node.lineno, f"imports {target}"))
    return found


def context_modules(label: str) -> list[Path]:
    return sorted(p for p in (ROOT / label).rglob("*.py") if "__pycache__" not in p.parts)


@pytest.mark.parametrize("label", CONTEXTS)
def test_contexts_import_only_each_others_topics_and_events(label: str) -> None:
    found: list[Violation] = []
    for path in context_modules(label):
        found += violations_in_source(label, _module_name(path), path.read_text(),
                                      str(path.relative_to(ROOT)))
    assert found == []


@pytest.mark.parametrize("label", CONTEXTS)
def test_no_model_relation_crosses_a_context(label: str) -> None:
    crossing = [
        f"{model._meta.label}.{field.name} -> {field.related_model._meta.label}"
        for model in apps.get_app_config(label).get_models()
        for field in model._meta.get_fields()
        if field.is_relation and field.related_model is not None
        and not isinstance(field.related_model, str)
        and field.related_model._meta.app_label in CONTEXTS
        and field.related_model._meta.app_label != label
    ]
    assert crossing == []


def test_every_context_has_the_same_shape() -> None:
    for label in CONTEXTS:
        present = {p.name for p in (ROOT / label).iterdir()}
        for name in ("topics.py", "events.py", "domain_events.py", "services.py",
                     "subscribers.py", "models.py", "admin.py", "migrations"):
            assert name in present, f"{label} has no {name}"


# The detector itself must catch what it is meant to catch.

@pytest.mark.parametrize("source", [
    "from files.models import StoredFile",
    "from files import services",
    "import equipment.services",
    "from equipment.services import check_in",
    "from equipment.domain_events import EquipmentAdded",
    "from ..equipment import models",
    "apps.get_model('files', 'StoredFile')",
    "apps.get_model('files.StoredFile')",
    "import_module('equipment.models')",
])
def test_detector_flags_forbidden_access(source: str) -> None:
    assert violations_in_source("accounts", "accounts.subscribers", source, "x.py")


@pytest.mark.parametrize("source", [
    "from files.events import FileStored",
    "from files import events, topics",
    "from equipment.topics import EquipmentTopics",
    "import equipment.events",
    "from .models import Profile",
    "from accounts.services import delete_user",
    "apps.get_model('accounts', 'Profile')",
    "apps.get_model('auth', 'User')",
    "from django.db import models",
])
def test_detector_allows_public_modules_and_own_code(source: str) -> None:
    assert violations_in_source("accounts", "accounts.subscribers", source, "x.py") == []
