"""The package stays in small pieces: no module of integration_events/ over 600 lines, no
function over 80 (the redesign's bound; a module past ~500 or a function past ~60 is a sign
to split by concern)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "integration_events"
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80


def sources() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "migrations" not in p.parts)


def test_no_module_over_600_lines() -> None:
    long = {str(p.relative_to(PACKAGE)): n for p in sources()
            if (n := p.read_text().count("\n")) > MAX_MODULE_LINES}
    assert not long, f"split these modules: {long}"


def test_no_function_over_80_lines() -> None:
    long = {}
    for path in sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long[f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name}"] = lines
    assert not long, f"split these functions: {long}"


def test_the_checker_sees_the_package() -> None:
    assert len(sources()) > 20 and any(p.name == "execute.py" for p in sources())
