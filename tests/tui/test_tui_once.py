"""`evicctl top --once`: one snapshot printed with rich, without a terminal."""

from __future__ import annotations

import io
import re
import subprocess
import sys

import pytest
from rich.console import Console
from tui_helpers import FIXTURE_NOW, H200, FixedTelemetry, make_fixture_db

from evicctl.errors import StoreError, UnknownNameError
from evicctl.tui.once import render_once

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _render(path, *, width: int = 120, sort: str = "utility", telemetry=None, **kwargs) -> str:
    out = io.StringIO()
    console = Console(file=out, width=width)  # a file: not a terminal, no colour
    render_once(path, console, sort, telemetry=telemetry or FixedTelemetry(), now=FIXTURE_NOW, **kwargs)
    return out.getvalue()


def _context_ids(text: str) -> list[str]:
    return re.findall(r"^\s*\S?\s*(ctx-\d{5})", text, flags=re.M)


def test_prints_every_section_without_colour(fixture_db):
    text = _render(fixture_db.path)
    assert not ANSI.search(text)
    assert "● manager pid 4242 on fixture-host" in text and "heartbeat 1.0s ago" in text
    for heading in ("tiers", "host", "contexts", "events"):
        assert re.search(rf"^{heading}\b", text, flags=re.M), heading
    for tier in fixture_db.tiers:
        assert re.search(rf"^{tier}\s+\S", text, flags=re.M), tier
    assert "no GPU (NVML library not found)" in text
    assert f"30 of {len(fixture_db.context_ids)}" in text
    assert len(_context_ids(text)) == 30
    assert "pin done: pinned" in text  # the latest events, the operator's command among them


def test_gpu_rows_show_memory_utilisation_and_power(fixture_db):
    text = _render(fixture_db.path, telemetry=FixedTelemetry(gpus=(H200,)))
    assert re.search(r"GPU0 H200 .*45\.0/141 GiB 37% 45°C 312/700 W", text)
    assert "no GPU" not in text


def test_sort_and_limit(fixture_db):
    text = _render(fixture_db.path, sort="-hits", limit=5)
    ids = _context_ids(text)
    assert len(ids) == 5 and "5 of 60 · sort hits ↓" in text
    hits = [int(re.search(rf"{cid}.*?\s(\d+)\s+\S+\s*$", text, flags=re.M).group(1)) for cid in ids]
    assert hits == sorted(hits, reverse=True)
    text = _render(fixture_db.path, sort="+hits", limit=5)
    assert "sort hits ↑" in text


def test_no_manager_is_said_plainly(tmp_path):
    info = make_fixture_db(tmp_path / "evicctl.db", 10, manager="stale")
    text = _render(info.path)
    assert "✗ no manager running (last seen 1h00m ago, pid 4242" in text
    assert "showing the stored placement" in text
    assert len(_context_ids(text)) == 10  # the stored placement is still shown


def test_never_started_manager(tmp_path):
    info = make_fixture_db(tmp_path / "evicctl.db", 3, manager="none")
    assert "none has run on this database" in _render(info.path)


def test_narrow_console_drops_columns_not_rows(fixture_db):
    text = _render(fixture_db.path, width=80)
    assert all(len(line) <= 80 for line in text.splitlines())
    assert len(_context_ids(text)) == 30


def test_missing_database_and_bad_sort_are_typed_errors(tmp_path, fixture_db):
    with pytest.raises(StoreError, match="no database at"):
        _render(tmp_path / "missing.db")
    with pytest.raises(UnknownNameError, match="valid: id, label"):
        _render(fixture_db.path, sort="bogus")


def test_cli_top_once_works_piped(fixture_db):
    done = subprocess.run(
        [sys.executable, "-c", "from evicctl.cli import main; main()", "top", "--once",
         "--db", str(fixture_db.path), "--sort", "hits"],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert not ANSI.search(done.stdout)
    assert "contexts" in done.stdout and "ctx-00000" in done.stdout


def test_cli_top_live_without_terminal_exits_2(fixture_db):
    done = subprocess.run(
        [sys.executable, "-c", "from evicctl.cli import main; main()", "top",
         "--db", str(fixture_db.path)],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 2
    assert "needs a terminal" in done.stderr and "--once" in done.stderr
    assert "Traceback" not in done.stderr
