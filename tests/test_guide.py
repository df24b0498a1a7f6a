"""docs/guide.md cannot rot: its Python blocks run in order in one namespace (as if they were
one module of the test app), and its "# excerpt of <file>" blocks must still be word for word
in the file they quote."""

from __future__ import annotations

import re
import sys
import textwrap
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from integration_events.domain import all_domain_handlers, forget_domain_handler
from integration_events.domain_checks import check_domain_handlers
from integration_events.events import declarations, forget_event_class
from integration_events.registry import all_subscriptions, unregister

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "guide.md"
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
EXCERPT = re.compile(r"\A# excerpt of (\S+)\n")
# The guide's own events and handlers belong to the test app, as if it were their module.
MODULE_NAME = "tests.eventapp.guide"


def blocks(path: Path) -> list[tuple[str, str]]:
    """(language, code) of every fenced block, in order."""
    return [(m.group(1), m.group(2)) for m in BLOCK.finditer(path.read_text())]


def excerpt_source(code: str) -> tuple[Path, str] | None:
    match = EXCERPT.match(code)
    if match is None:
        return None
    return ROOT / match.group(1), code[match.end():]


@pytest.fixture
def restore_registries() -> Iterator[None]:
    """Whatever the guide registers (topics, subscribers, domain handlers) goes afterwards."""
    subscriptions = {(s.topic, s.group) for s in all_subscriptions()}
    handlers = {id(h.handler) for h in all_domain_handlers()}
    topics = {t: list(d) for t, d in declarations().items()}
    yield
    for sub in all_subscriptions():
        if (sub.topic, sub.group) not in subscriptions:
            unregister(sub.topic, sub.group)
    for entry in all_domain_handlers():
        if id(entry.handler) not in handlers:
            forget_domain_handler(entry.handler)
    for topic, decls in list(declarations().items()):
        for decl in decls:
            if decl not in topics.get(topic, []):
                forget_event_class(decl.event_class)


def test_the_guide_has_only_python_blocks_and_some_of_each_kind() -> None:
    found = blocks(GUIDE)
    assert {language for language, _ in found} == {"python"}
    excerpts = [code for _, code in found if excerpt_source(code)]
    assert len(excerpts) >= 3
    assert len(found) - len(excerpts) >= 8


@pytest.mark.parametrize("index", [
    i for i, (_, code) in enumerate(blocks(GUIDE)) if excerpt_source(code)
])
def test_every_excerpt_is_still_in_its_file(index: int) -> None:
    _, code = blocks(GUIDE)[index]
    found = excerpt_source(code)
    assert found is not None
    path, quoted = found
    assert quoted in path.read_text(), f"{path.name} no longer contains:\n{quoted}"
    # It is Python, too (wrapped in a function: an excerpt may be a function's middle).
    compile("def _excerpt():\n" + textwrap.indent(textwrap.dedent(quoted), "    "),
            str(path), "exec")


@pytest.mark.django_db(transaction=True)
def test_every_python_block_runs_in_order(restore_registries: None, settings: Any,
                                          tmp_path: Path, monkeypatch: Any) -> None:
    settings.MEDIA_ROOT = str(tmp_path / "media")
    # A real module, so that pydantic and typing resolve annotations as they would in an app.
    module = types.ModuleType(MODULE_NAME)
    monkeypatch.setitem(sys.modules, MODULE_NAME, module)
    namespace = module.__dict__
    ran = 0
    for number, (_, code) in enumerate(blocks(GUIDE), start=1):
        if excerpt_source(code):
            continue
        try:
            # dont_inherit: this file's "from __future__ import annotations" stays out of it.
            exec(compile(code, f"{GUIDE.name} block {number}", "exec", dont_inherit=True),
                 namespace)
        except Exception as exc:
            raise AssertionError(f"block {number} of {GUIDE.name} failed:\n{code}") from exc
        ran += 1
    assert ran >= 8
    # The guide's handlers sit in the app of the events they handle (its own, or the
    # samples' for the one it registers only inside a try/finally).
    assert check_domain_handlers() == []
