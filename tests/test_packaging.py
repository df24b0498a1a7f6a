"""`pip install .` ships the integration_events package with its migrations and templates,
and nothing of the demo project."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )
    if result.returncode != 0:
        pytest.fail(f"pip wheel failed:\n{result.stdout}\n{result.stderr}")
    (path,) = out.glob("django_integration_events-*.whl")
    return zipfile.ZipFile(path)


def test_wheel_contains_the_app_with_migrations_and_templates(wheel) -> None:
    names = set(wheel.namelist())
    assert "integration_events/migrations/0001_initial.py" in names
    assert "integration_events/py.typed" in names
    assert any(n.startswith("integration_events/templates/") for n in names), (
        "templates are package data")
    assert "integration_events/management/commands/__init__.py" in names


def test_wheel_leaves_out_the_demo(wheel) -> None:
    tops = {n.split("/", 1)[0] for n in wheel.namelist()}
    assert not tops & {"equipment", "accounts", "files", "project", "tests", "bench"}


def test_classifiers_name_the_django_version_this_suite_runs_on() -> None:
    """The suite runs on Django 5.2 LTS (scripts/test.sh's Python 3.11 venv) and the newest
    release; each run checks that its own version is among the classifiers."""
    import tomllib

    import django

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {c.rsplit(" :: ", 1)[1] for c in project["classifiers"]
                if c.startswith("Framework :: Django :: ")}
    assert "{}.{}".format(*django.VERSION[:2]) in declared, declared
    assert "5.2" in declared, "the oldest supported version, also in dependencies"
    assert any(d.startswith("django>=5.2") for d in project["dependencies"])
