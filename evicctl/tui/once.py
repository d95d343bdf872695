"""`evicctl top --once`: one snapshot of the dashboard, printed with rich, then return.

Works without a terminal (piped, cron, CI): the console decides colour and width; nothing
here needs a TTY. The sections are the live dashboard's, from the same renderers.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.text import Text

from evicctl.telemetry import TelemetryReader, disk_folder
from evicctl.tui import render
from evicctl.tui.query import parse_sort, sort_title, visible_columns
from evicctl.tui.source import TelemetrySource

ONCE_ROWS = 30  # contexts printed; `evicctl ls` lists them all
ONCE_EVENTS = 10


def render_once(db_path: Path | str, console: Console, sort: str = "utility", *,
                limit: int = ONCE_ROWS, telemetry: TelemetrySource | None = None,
                now: float | None = None) -> None:
    """Print header, tiers, host telemetry, the top `limit` contexts and the latest events.

    Raises StoreError when the database cannot be read, UsageError on a bad sort key.
    """
    from evicctl.snapshot.read import read_snapshot
    from evicctl.store.database import Store

    key, descending = parse_sort(sort)
    store = Store.open(db_path, readonly=True)
    try:
        snapshot = read_snapshot(store, sort=key, descending=descending, limit=limit,
                                 events_limit=ONCE_EVENTS, now=now)
    finally:
        store.close()
    reader = telemetry
    if reader is None:
        reader = TelemetryReader(disk_folder(snapshot.manager.description if snapshot.manager else None))
    try:
        tel = reader.read()
    finally:
        reader.close()
    print_snapshot(console, snapshot, tel, db_path=str(db_path), sort=(key, descending))


def _heading(console: Console, title: str, detail: str = "") -> None:
    text = Text(title, style="bold")
    if detail:
        text.append(f"  {detail}", style="dim")
    console.print()
    console.print(text)


def print_snapshot(console: Console, snapshot: Any, tel: Any, *, db_path: str,
                   sort: tuple[str, bool]) -> None:
    now = snapshot.taken_at
    stamp = datetime.fromtimestamp(now).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
    title = Text("evicctl top", style="bold")
    title.append(f"  {db_path} · {stamp}", style="dim")
    console.print(title)
    console.print(render.manager_text(snapshot.manager, now))

    _heading(console, "tiers", f"misses {snapshot.misses_total:,}")
    console.print(render.tiers_table(snapshot.tiers, bar_width=12, spark_width=20))

    _heading(console, "host", tel.disk.path if tel.disk is not None else "")
    console.print(render.telemetry_table(tel, bar_width=10))

    key, descending = sort
    shown = len(snapshot.contexts)
    window = f"{shown} of {snapshot.contexts_total:,}" if shown else "none"
    order = f"sort {sort_title(key)} {'↓' if descending else '↑'}"
    _heading(console, "contexts", f"{window} · {order} · ⚑ pinned")
    columns = visible_columns(console.width)
    console.print(render.contexts_table(snapshot.contexts, now, columns=columns, sort=key,
                                        descending=descending))

    _heading(console, "events", f"latest {min(len(snapshot.events), ONCE_EVENTS)}")
    console.print(render.events_table(snapshot.events, now))
