"""A headless demo whose output is not a terminal still prints where it is, regularly."""

from __future__ import annotations

import io
import time

from rich.console import Console

from evicctl.engine.demo import PLAIN_PROGRESS_S, PlainProgress


def test_plain_progress_prints_the_latest_status_regularly():
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=200)
    assert not console.is_terminal
    progress = PlainProgress(console, every_s=0.05)
    progress.update("starting: loading the model")
    time.sleep(0.2)
    progress.update("served 3 | hits 2 misses 1")
    time.sleep(0.2)
    progress.stop()
    lines = out.getvalue().splitlines()
    assert len(lines) >= 4
    assert any("loading the model" in ln for ln in lines) and lines[-1].endswith("served 3 | hits 2 misses 1")
    assert PLAIN_PROGRESS_S <= 10.0
