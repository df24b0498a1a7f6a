"""The test tooling itself: optional drivers skip instead of breaking collection, and
scripts/test.sh says plainly when a suite errored in collection or collected nothing."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _fake_broken_mssql(tmp_path: Path) -> Path:
    """A stand-in for mssql-django on a machine without unixODBC: importing ``mssql.base``
    raises ImproperlyConfigured, as the real one does when libodbc.so.2 cannot be loaded."""
    pkg = tmp_path / "fake" / "mssql"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "base.py").write_text(textwrap.dedent("""
        from django.core.exceptions import ImproperlyConfigured
        raise ImproperlyConfigured(
            "Error loading pyodbc module: libodbc.so.2: cannot open shared object file")
    """))
    return pkg.parent


def test_mssql_tests_skip_when_the_odbc_library_is_missing(tmp_path: Path) -> None:
    fake = _fake_broken_mssql(tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake), str(ROOT)])}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rs",
         "tests/test_mssql.py"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    out = result.stdout + result.stderr
    # 5: pytest's "no tests collected" (the only module was skipped), not 2 (errors).
    assert result.returncode in (0, 5), out
    assert "1 skipped" in out and "libodbc2" in out and "error during collection" not in out, out
def _run_suite_function(tmp_path: Path, test_source: str) -> subprocess.CompletedProcess[str]:
    """Source scripts/_suite.sh and run one suite (run_pytest) plus the summary over a
    throw-away test directory."""
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "test_x.py").write_text(textwrap.dedent(test_source))
    script = textwrap.dedent(f"""
        set -uo pipefail
        cd {ROOT}
        . scripts/_suite.sh
        run_pytest "fake suite" {sys.executable} IE_X=1 -- -p no:cacheprovider \\
            --rootdir {suite} -c /dev/null {suite}
        summary
    """)
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120)


def test_test_sh_says_when_a_suite_errors_in_collection(tmp_path: Path) -> None:
    result = _run_suite_function(tmp_path, "import not_a_module_anywhere\n")
    out = result.stdout
    assert result.returncode != 0, out
    assert "collection" in out.lower() and "no tests ran" in out.lower(), out
    assert "ERROR    fake suite" in out, out


def test_test_sh_says_when_a_suite_collects_nothing(tmp_path: Path) -> None:
    result = _run_suite_function(tmp_path, "x = 1\n")
    out = result.stdout
    assert result.returncode != 0, out
    assert "collected nothing" in out.lower(), out


def test_test_sh_counts_a_passing_suite(tmp_path: Path) -> None:
    result = _run_suite_function(tmp_path, "def test_ok():\n    assert True\n")
    out = result.stdout
    assert result.returncode == 0, out
    assert "1 passed, 0 failed" in out, out
