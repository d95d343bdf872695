"""Fixtures for the dashboard tests: a fixture database and a fake manager on it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tui_helpers import FakeManager, make_fixture_db


@pytest.fixture
def fixture_db(tmp_path: Path) -> Any:
    """60 contexts over gpu / cpu / disk, a live-looking manager row at the fixed clock."""
    return make_fixture_db(tmp_path / "evicctl.db", 60, seed=0)


@pytest.fixture
def manager(fixture_db: Any) -> Iterator[FakeManager]:
    with FakeManager(fixture_db.path) as fake:
        yield fake
