"""Snapshot tests (pytest-textual-snapshot) of the dashboard on a fixture database.

Deterministic by construction: a fixed clock (the fixture's), fixed telemetry, a fixed
terminal size, no timing figures in the header, the database named by a relative path.
Update after an intended change with `pytest tests/tui --snapshot-update` and look at
the report.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tui_helpers import H200, FixedTelemetry, loaded, make_app, make_fixture_db, wait_for

from evicctl.tui.screens import DetailScreen

WIDE = (120, 40)
SMALL = (80, 24)
# The manager's cost model as stored in config_json (CostModel.to_dict()), fixed here so the
# detail view's predicted TTFTs do not move when the library's default coefficients do.
COST_MODEL = {
    "prefill_coef": [0.05, 1.6e-3, 1.5e-7],
    "default_prefill_coef": [0.05, 1.6e-3, 1.5e-7],
    "decode_bps": {"none": 1e12, "drop": 1e12, "quant": 4e8, "drop+quant": 4e8},
    "history": [],
}


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in tmp_path so the header shows `evicctl.db`, not a random temp directory."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _db(manager: str = "alive", n: int = 60) -> Path:
    make_fixture_db(Path("evicctl.db"), n, seed=0, manager=manager, cost_model=COST_MODEL)
    return Path("evicctl.db")


async def _settle(pilot) -> None:
    await loaded(pilot)
    await pilot.pause(0.1)


def test_main_screen_with_gpu(in_tmp, snap_compare):
    app = make_app(_db(), telemetry=FixedTelemetry(gpus=(H200,)))
    assert snap_compare(app, terminal_size=WIDE, run_before=_settle)


def test_main_screen_80x24_without_gpu(in_tmp, snap_compare):
    app = make_app(_db())
    assert snap_compare(app, terminal_size=SMALL, run_before=_settle)


def test_no_manager_running(in_tmp, snap_compare):
    app = make_app(_db(manager="stale"))
    assert snap_compare(app, terminal_size=WIDE, run_before=_settle)


def test_detail_view(in_tmp, snap_compare):
    app = make_app(_db())

    async def open_detail(pilot) -> None:
        await loaded(pilot)
        await pilot.press("down", "enter")
        screen = app.screen
        assert isinstance(screen, DetailScreen)
        await wait_for(pilot, lambda: screen.detail is not None, timeout_s=60)
        await pilot.pause(0.1)

    assert snap_compare(app, terminal_size=WIDE, run_before=open_detail)


def test_help_and_marks(in_tmp, snap_compare):
    app = make_app(_db(), readonly=True)

    async def mark_then_help(pilot) -> None:
        await loaded(pilot)
        await pilot.press("space", "space", "question_mark")
        await pilot.pause(0.1)

    assert snap_compare(app, terminal_size=WIDE, run_before=mark_then_help)
