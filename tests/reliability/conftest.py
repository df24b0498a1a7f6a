"""Fixtures of the reliability suite and the summary table printed at the end of the run."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .harness import RESULTS, Clusters, table


@pytest.fixture
def clusters(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Clusters]:
    c = Clusters(request.node.name.replace("test_", "").replace("[", "-").rstrip("]"), tmp_path)
    yield c
    c.close()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not RESULTS:
        return
    terminalreporter.section("reliability results")
    for line in table(RESULTS):
        terminalreporter.write_line(line)
