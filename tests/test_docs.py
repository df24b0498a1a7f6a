"""The documentation's code runs: the README's install-free path (a new Django project with
the README's settings and sample apps passes the checks and delivers an event) and the pytest
example of docs/testing.md, run in that project."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _blocks(path: Path, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", path.read_text(), re.S)


def _block(path: Path, lang: str, first_line: str) -> str:
    found = [b for b in _blocks(path, lang) if b.startswith(first_line + "\n")]
    assert len(found) == 1, f"{path.name}: one ```{lang} block starting {first_line!r}"
    return found[0]


def _write_files(root: Path, block: str) -> list[str]:
    """Split a block whose parts start with a ``# app/module.py: ...`` comment into files."""
    parts = re.split(r"^# ([\w/]+\.py)\b.*$", block, flags=re.M)
    written = []
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(body.strip() + "\n")
        written.append(name)
    return written


def _run(project: Path, *args: str, timeout: float = 120) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IE_", "DJANGO_"))}
    env["DJANGO_SETTINGS_MODULE"] = "mysite.settings"
    result = subprocess.run([sys.executable, *args], cwd=project, env=env, capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, f"{args}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def readme_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """startproject + startapp, then the README's settings block and its sample apps."""
    project = tmp_path_factory.mktemp("readme-project")
    _run(project, "-m", "django", "startproject", "mysite", ".")
    for app in ("equipment", "files"):
        _run(project, "manage.py", "startapp", app)
    readme = ROOT / "README.md"
    settings = project / "mysite" / "settings.py"
    settings.write_text(settings.read_text() + "\n" + _block(readme, "python", "# settings.py")
                        + '\nINSTALLED_APPS += ["equipment", "files"]\n')
    written = _write_files(project, _block(readme, "python", "# equipment/models.py"))
    assert {"equipment/services.py", "files/subscribers.py"} <= set(written)
    _run(project, "manage.py", "makemigrations", "equipment", "files")
    return project


def test_readme_sample_passes_the_checks_and_delivers_in_a_new_project(
    readme_project: Path,
) -> None:
    out = _run(readme_project, "manage.py", "check", "--fail-level", "WARNING")
    assert "no issues" in out, out
    _run(readme_project, "manage.py", "migrate", "-v", "0")
    out = _run(readme_project, "manage.py", "shell", "-c", textwrap.dedent("""
        from equipment.services import create_equipment
        from files.models import StoredFile
        from integration_events.testing import deliver_pending
        item = create_equipment("Drill")
        stats = deliver_pending()
        print("RESULT", stats.succeeded, list(StoredFile.objects.values_list("name", flat=True)))
    """))
    assert "RESULT 1 ['Drill manual']" in out, out
    assert "Enqueued" not in out, "the nudge after commit printed django-q2's Enqueued line"


def test_docs_testing_example_passes_in_the_readme_project(readme_project: Path) -> None:
    testing = ROOT / "docs" / "testing.md"
    ini = _block(testing, "ini", "# pytest.ini")
    (readme_project / "pytest.ini").write_text(ini.split("\n", 1)[1])
    (readme_project / "tests").mkdir(exist_ok=True)
    assert _write_files(readme_project, _block(
        testing, "python", "# tests/test_equipment_events.py")) == [
        "tests/test_equipment_events.py"]
    out = _run(readme_project, "-m", "pytest", "-p", "no:cacheprovider", "-q",
               "tests/test_equipment_events.py")
    assert "4 passed" in out, out
