"""What add_integration_event and add_domain_event share: names, property specs, and
editing Python modules in place so that ruff's isort and the rest of the file stay happy.

Existing files are edited, never rewritten: new code goes at the end of a module, and missing
imports are merged into the import block where isort (ruff's I001) expects them. A command
computes every change first and writes nothing unless all of them could be computed.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import keyword
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from django.apps import AppConfig, apps
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

LINE_LENGTH = 100
PASCAL_CASE = re.compile(r"^[A-Z][a-z0-9]+(?:[A-Z][a-z0-9]*)*$")
SNAKE_CASE = re.compile(r"^[a-z][a-z0-9]*(?:_[a-z0-9]+)*$")

# Property type -> the import it needs (module, name), or None for a builtin.
SCALAR_TYPES: dict[str, tuple[str, str] | None] = {
    "str": None,
    "int": None,
    "float": None,
    "bool": None,
    "UUID": ("uuid", "UUID"),
    "Decimal": ("decimal", "Decimal"),
    "datetime": ("datetime", "datetime"),
    "date": ("datetime", "date"),
}
ALLOWED_TYPES_HELP = (
    ", ".join(SCALAR_TYPES) + "; list[T] of one of those; and T | None for an optional field"
)
# Attributes pydantic already uses (plus "model_*"); each command adds its base class's own.
PYDANTIC_RESERVED = frozenset({"model_config", "model_fields", "schema", "json", "dict", "copy"})


def kebab(name: str) -> str:
    """EquipmentCheckedOut -> equipment-checked-out."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "-", name).lower()


def upper_snake(name: str) -> str:
    return kebab(name).replace("-", "_").upper()


def pascal(label: str) -> str:
    return "".join(part.capitalize() for part in re.split(r"[_\-.]", label) if part)


@dataclass(frozen=True)
class Property:
    name: str
    annotation: str
    optional: bool
    imports: tuple[tuple[str, str], ...]

    def line(self) -> str:
        return f"    {self.name}: {self.annotation}" + (" = None" if self.optional else "")


def parse_properties(spec: str, *, base: str = "IntegrationEvent",
                     reserved: frozenset[str] = frozenset({"topic", "version"})
                     ) -> list[Property]:
    """Parse "a:UUID,b:str | None,c:list[int]" (raises CommandError listing what is allowed).
    ``reserved`` are the names ``base`` already uses, besides pydantic's."""
    props: list[Property] = []
    seen: set[str] = set()
    for raw in (part.strip() for part in spec.split(",")):
        if not raw:
            continue
        name, sep, type_text = (s.strip() for s in raw.partition(":"))
        if not sep or not type_text:
            raise CommandError(f"property {raw!r} has no type: write name:type, e.g. "
                               f"equipment_id:UUID. Allowed types: {ALLOWED_TYPES_HELP}.")
        if not SNAKE_CASE.match(name) or keyword.iskeyword(name):
            raise CommandError(f"property name {name!r} is not allowed: use snake_case "
                               "(lower-case letters, digits, single underscores), not a Python "
                               "keyword.")
        if name in reserved | PYDANTIC_RESERVED or name.startswith("model_"):
            raise CommandError(f"property name {name!r} is reserved by {base} or "
                               "pydantic; choose another name (e.g. equipment_version instead "
                               "of version).")
        if name in seen:
            raise CommandError(f"property {name!r} is given twice")
        seen.add(name)
        optional = False
        inner = re.sub(r"\s+", " ", type_text)
        if inner.endswith(" | None") or inner.endswith("|None"):
            optional = True
            inner = inner.rsplit("|", 1)[0].strip()
        is_list = False
        match = re.fullmatch(r"list\[\s*(\w+)\s*\]", inner)
        if match:
            is_list, inner = True, match.group(1)
        if inner not in SCALAR_TYPES:
            raise CommandError(f"property {name!r} has type {type_text!r}, which is not "
                               f"supported. Allowed types: {ALLOWED_TYPES_HELP}.")
        needed = SCALAR_TYPES[inner]
        annotation = f"list[{inner}]" if is_list else inner
        if optional:
            annotation += " | None"
        props.append(Property(name, annotation, optional, (needed,) if needed else ()))
    if not props:
        raise CommandError("--properties names no property; e.g. "
                           '--properties "equipment_id:UUID,name:str"')
    return props


# --- editing Python source without disturbing it ---------------------------------------------

SECTIONS = ("future", "stdlib", "thirdparty", "firstparty", "local")


@dataclass
class SourceFile:
    """A module being edited: its original text and the text after our changes."""

    path: Path
    original: str
    text: str
    roots: tuple[Path, ...] = field(default=())

    @classmethod
    def load(cls, path: Path, roots: tuple[Path, ...], new_text: str = "") -> SourceFile:
        original = path.read_text() if path.exists() else ""
        return cls(path, original, original or new_text, roots)

    @property
    def changed(self) -> bool:
        return self.text != self.original

    def tree(self) -> ast.Module:
        try:
            return ast.parse(self.text, filename=str(self.path))
        except SyntaxError as exc:
            raise CommandError(f"{self.path} does not parse ({exc}); fix it first") from exc

    # Sections, like ruff's isort: a module is first-party when it lives under the project.
    def section(self, node: ast.Import | ast.ImportFrom) -> str:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                return "local"
            module = node.module or ""
        else:
            module = node.names[0].name
        return self.section_of(module)

    def section_of(self, module: str) -> str:
        top = module.split(".")[0]
        if top == "__future__":
            return "future"
        if top in sys.stdlib_module_names:
            return "stdlib"
        for root in self.roots:
            if (root / top).is_dir() or (root / f"{top}.py").is_file():
                return "firstparty"
        try:
            spec = importlib.util.find_spec(top)
        except (ImportError, ValueError):
            spec = None
        origin = getattr(spec, "origin", None) or ""
        if origin and any(Path(origin).is_relative_to(r) for r in self.roots):
            return "firstparty"
        return "thirdparty"

    def header_imports(self) -> list[ast.Import | ast.ImportFrom]:
        """The top-level import statements of the leading import block."""
        found: list[ast.Import | ast.ImportFrom] = []
        for index, node in enumerate(self.tree().body):
            if isinstance(node, ast.Import | ast.ImportFrom):
                found.append(node)
            elif index == 0 and isinstance(node, ast.Expr) and isinstance(
                node.value, ast.Constant
            ):
                continue  # the module docstring
            else:
                break
        return found

    def ensure_import(self, module: str, name: str, level: int = 0) -> None:
        """Make ``from <module> import <name>`` available, merging into an existing
        ``from <module> import ...`` or adding a statement in its isort section."""
        imports = self.header_imports()
        for node in imports:
            if isinstance(node, ast.ImportFrom) and node.module == module and node.level == level:
                names = [a.name if a.asname is None else f"{a.name} as {a.asname}"
                         for a in node.names]
                if name in names or any(a.name == name and a.asname is None for a in node.names):
                    return
                if any(a.name == "*" for a in node.names):
                    return
                self._replace_lines(node, _format_from(module, level, [*names, name]))
                return
        probe = ast.ImportFrom(module=module, names=[ast.alias(name)], level=level)
        self.insert_import(_format_from(module, level, [name]), probe)

    def has_top_level(self, name: str) -> bool:
        """Whether the module binds ``name`` at top level (class, def, assignment, import)."""
        for node in self.tree().body:
            bound: list[str] = []
            if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                bound = [node.name]
            elif isinstance(node, ast.Assign):
                bound = [t.id for t in node.targets if isinstance(t, ast.Name)]
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                bound = [node.target.id]
            elif isinstance(node, ast.Import | ast.ImportFrom):
                bound = [a.asname or a.name.split(".")[0] for a in node.names]
            if name in bound:
                return True
        return False

    def append_block(self, block: str) -> None:
        """Append a top-level block after two blank lines."""
        body = self.text.rstrip("\n")
        self.text = (body + "\n\n\n" if body else "") + block.rstrip("\n") + "\n"

    def insert_after_imports(self, block: str) -> None:
        imports = self.header_imports()
        if not imports:
            self._insert_at_top(block)
            return
        self._insert_after(imports[-1], block, blank_lines=1)

    # Line-based edits keep everything else byte for byte.
    def _lines(self) -> list[str]:
        return self.text.splitlines(keepends=True)

    def _replace_lines(self, node: ast.stmt, replacement: str) -> None:
        lines = self._lines()
        end = node.end_lineno or node.lineno
        lines[node.lineno - 1:end] = [replacement + "\n"]
        self.text = "".join(lines)

    def _insert_before(self, node: ast.stmt, statement: str, blank_lines: int = 0) -> None:
        """Put ``statement`` on the lines above ``node``, then ``blank_lines`` empty lines."""
        lines = self._lines()
        lines.insert(node.lineno - 1, statement + "\n" + "\n" * blank_lines)
        self.text = "".join(lines)

    def _insert_after(self, node: ast.stmt, statement: str, blank_lines: int = 0) -> None:
        """Put ``blank_lines`` empty lines, then ``statement``, below ``node``."""
        lines = self._lines()
        end = node.end_lineno or node.lineno
        if not lines[end - 1].endswith("\n"):
            lines[end - 1] += "\n"
        lines.insert(end, "\n" * blank_lines + statement + "\n")
        self.text = "".join(lines)

    def insert_import(self, statement: str, probe: ast.Import | ast.ImportFrom) -> None:
        """Add an import statement where isort would put it."""
        imports = self.header_imports()
        section = self.section(probe)
        key = _sort_key(probe)
        same = [n for n in imports if self.section(n) == section]
        if same:
            after = [n for n in same if _sort_key(n) > key]
            if after:
                self._insert_before(after[0], statement)
            else:
                self._insert_after(same[-1], statement)
            return
        order = SECTIONS.index(section)
        earlier = [n for n in imports if SECTIONS.index(self.section(n)) < order]
        later = [n for n in imports if SECTIONS.index(self.section(n)) > order]
        if earlier:
            self._insert_after(earlier[-1], statement, blank_lines=1)
        elif later:
            self._insert_before(later[0], statement, blank_lines=1)
        else:
            self._insert_at_top(statement)

    def _insert_at_top(self, statement: str) -> None:
        """Before any code: after the module docstring and ``from __future__`` imports."""
        tree = self.tree()
        anchor: ast.stmt | None = None
        for node in tree.body:
            if anchor is None and isinstance(node, ast.Expr) and isinstance(
                node.value, ast.Constant
            ) and isinstance(node.value.value, str):
                anchor = node
                continue
            if isinstance(node, ast.ImportFrom) and node.module == "__future__":
                anchor = node
                continue
            break
        if anchor is None:
            rest = self.text.lstrip("\n")
            self.text = statement + "\n" + ("\n\n" + rest if rest else "")
            return
        lines = self._lines()
        end = anchor.end_lineno or anchor.lineno
        following = "".join(lines[end:]).lstrip("\n")
        head = "".join(lines[:end])
        if not head.endswith("\n"):
            head += "\n"
        self.text = head + "\n" + statement + "\n" + ("\n\n" + following if following else "")


def _format_from(module: str, level: int, names: list[str]) -> str:
    unique = sorted(set(names), key=_member_key)
    source = "." * level + (module or "")
    one_line = f"from {source} import {', '.join(unique)}"
    if len(one_line) <= LINE_LENGTH:
        return one_line
    return f"from {source} import (\n" + "".join(f"    {n},\n" for n in unique) + ")"


def _member_key(name: str) -> tuple[int, str]:
    # ruff's isort order-by-type: CONSTANTS, then Classes, then functions and variables.
    bare = name.split(" as ")[0]
    if bare.isupper() and len(bare) > 1:
        kind = 0
    elif bare[:1].isupper():
        kind = 1
    else:
        kind = 2
    return kind, bare.lower()


def _sort_key(node: ast.Import | ast.ImportFrom) -> tuple[int, int, str]:
    """Order inside a section (ruff's defaults): ``import x`` before ``from x import``,
    relative imports furthest first, then by module name ignoring case."""
    if isinstance(node, ast.Import):
        return 0, 0, node.names[0].name.lower()
    return 1, -node.level, (node.module or "").lower()




def ensure_plain_import(source: SourceFile, module: str) -> None:
    """``import <module>``, placed like isort would."""
    if any(isinstance(n, ast.Import) and any(a.name == module and not a.asname for a in n.names)
           for n in source.tree().body):
        return
    source.insert_import(f"import {module}", ast.Import(names=[ast.alias(module)]))


def ensure_logger(source: SourceFile) -> None:
    """A module-level ``logger = logging.getLogger(__name__)`` below the imports."""
    if source.has_top_level("logger"):
        return
    ensure_plain_import(source, "logging")
    source.insert_after_imports("logger = logging.getLogger(__name__)")


# --- apps and writing ------------------------------------------------------------------------


def _is_package_app(app: AppConfig) -> bool:
    return Path(app.path).is_relative_to(Path(sys.prefix)) or app.name.startswith("django.")


def resolve_app(label: str, option: str) -> AppConfig:
    """The installed app ``label`` of this project (CommandError naming the choices)."""
    try:
        app = apps.get_app_config(label)
    except LookupError:
        local = sorted(a.label for a in apps.get_app_configs() if not _is_package_app(a))
        raise CommandError(f"{option} {label!r} is not an installed app label. Your apps: "
                           f"{', '.join(local)}.") from None
    if _is_package_app(app):
        raise CommandError(f"{option} {label!r} is an installed package, not one of your "
                           "apps; events belong to your own apps")
    return app


def project_roots(*configs: AppConfig | None) -> tuple[Path, ...]:
    """Directories whose packages count as first-party for isort."""
    roots = [Path.cwd()]
    base = getattr(settings, "BASE_DIR", None)
    if base:
        roots.append(Path(base))
    for config in configs:
        if config is not None:
            depth = config.name.count(".") + 1
            roots.append(Path(config.path).parents[depth - 1])
    return tuple(dict.fromkeys(r.resolve() for r in roots))


def check_compiles(files: list[SourceFile]) -> None:
    for f in files:
        try:
            compile(f.text, str(f.path), "exec")
        except SyntaxError as exc:  # a bug here must never write a broken file
            raise CommandError(f"internal error: the edit of {f.path} does not parse: "
                               f"{exc}") from exc


def write_or_show(command: BaseCommand, files: list[SourceFile], dry_run: bool) -> list[SourceFile]:
    """Write the changed files, or print them as a unified diff with ``dry_run``; returns
    the changed files (empty after a dry run)."""
    changed = [f for f in files if f.changed]
    if dry_run:
        for f in changed:
            diff = difflib.unified_diff(
                f.original.splitlines(keepends=True), f.text.splitlines(keepends=True),
                fromfile=str(f.path) if f.original else "/dev/null", tofile=str(f.path),
            )
            command.stdout.write("".join(diff), ending="")
        command.stdout.write(f"(dry run: {len(changed)} file(s) would change; nothing written)")
        return []
    for f in changed:
        f.path.write_text(f.text)
    return changed


def report_written(command: BaseCommand, files: list[SourceFile]) -> None:
    for f in files:
        command.stdout.write(f"  {'updated' if f.original else 'created'} {f.path}")
