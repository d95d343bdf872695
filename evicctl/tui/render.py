"""Rich renderables of one snapshot: header, tiers, telemetry, contexts, events, detail.

Pure functions of (snapshot, telemetry, now): the live dashboard puts them in its widgets and
`top --once` prints them, so both show the same thing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from evicctl.telemetry import GpuTelemetry, Telemetry
from evicctl.tui import format as fmt
from evicctl.tui.query import COLUMNS, Column

KIND_STYLES = {
    "admit": "green",
    "move": "cyan",
    "promote": "cyan",
    "compress": "magenta",
    "recompress": "magenta",
    "evict": "yellow",
    "drop": "yellow",
    "lost": "bold red",
    "recovery": "green",
    "pin": "bold blue",
    "unpin": "blue",
    "command": "blue",
    "hit": "dim",
    "miss": "dim yellow",
}


def manager_text(manager: Any, now: float) -> Text:
    """The manager's state in one line; a dead or absent manager is loud, never blank."""
    if manager is not None and manager.alive:
        text = Text("● ", style="bold green")
        text.append("manager ", style="bold")
        text.append(f"pid {manager.pid} on {manager.host}")
        text.append(f" · up {fmt.fmt_duration(now - manager.started_at)}")
        text.append(f" · v{manager.version}")
        text.append(f" · heartbeat {fmt.fmt_ago(manager.heartbeat_at, now)}")
        backend = manager.description.codec_backend
        if backend != "torch (cpu)":  # on a GPU: which code decodes, loudly when it is the slow one
            text.append(f" · codecs: {backend}", style="green" if backend == "triton" else "bold yellow")
        return text
    text = Text("✗ no manager running", style="bold red")
    if manager is None:
        text.append(" (none has run on this database)", style="red")
    else:
        text.append(f" (last seen {fmt.fmt_ago(manager.heartbeat_at, now)}, pid {manager.pid}"
                    f" on {manager.host}, v{manager.version})", style="red")
    text.append(" · showing the stored placement; actions need a manager", style="yellow")
    return text


TIER_FIXED_CELLS = 4 + 5 + 13 + 9 + 6 + 2 * 4  # tier, percent, used/capacity, read, hit, gaps


def tiers_table(tiers: Sequence[Any], *, bar_width: int = 12, spark_width: int = 16) -> Table:
    """One row per tier: used bar (pressure colours), used/capacity, read bandwidth, hit rate
    over the last minute, and occupancy history (a sparkline of `samples`)."""
    table = Table(box=None, padding=(0, 1), pad_edge=False, show_edge=False, header_style="bold")
    name_width = max([4, *(len(t.name) for t in tiers)])
    table.add_column("tier", no_wrap=True, width=name_width)
    table.add_column("used", no_wrap=True, width=bar_width + 5)
    table.add_column("of capacity", no_wrap=True, justify="right", min_width=13)
    table.add_column("read", no_wrap=True, justify="right", width=9)
    table.add_column("hit 1m", no_wrap=True, justify="right", width=6)
    if spark_width:
        table.add_column("occupancy", no_wrap=True, width=spark_width)
    for tier in tiers:
        frac = fmt.occupancy(tier.used_bytes, tier.capacity_bytes)
        used = fmt.bar(frac, bar_width)
        used.append(f" {fmt.fmt_pct(frac):>4}", style=fmt.pressure_style(frac))
        cells: list[RenderableType] = [
            Text(tier.name, style="bold"),
            used,
            fmt.fmt_used_total(tier.used_bytes, tier.capacity_bytes),
            fmt.fmt_bps(tier.read_bps),
            fmt.fmt_hit_rate(tier.hit_rate_1m),
        ]
        if spark_width:
            cells.append(fmt.sparkline(tier.occupancy_history, spark_width))
        table.add_row(*cells)
    if not tiers:
        table.add_row(Text("none", style="dim"), Text("no tiers recorded yet", style="dim"),
                      "", "", "", *([""] if spark_width else []))
    return table


def _gpu_name(name: str | None) -> str:
    if name is None:
        return fmt.NA
    return name.removeprefix("NVIDIA ").strip()


def _gpu_extra(gpu: GpuTelemetry, power_limit: bool = True) -> str:
    util = fmt.NA if gpu.utilization_pct is None else f"{gpu.utilization_pct:.0f}%"
    temp = fmt.NA if gpu.temperature_c is None else f"{gpu.temperature_c:.0f}°C"
    power = fmt.NA if gpu.power_w is None else f"{gpu.power_w:.0f} W"
    if power_limit and gpu.power_w is not None and gpu.power_limit_w:
        power = f"{gpu.power_w:.0f}/{gpu.power_limit_w:.0f} W"
    return f"{util} {temp} {power}"


def telemetry_table(tel: Telemetry | None, *, bar_width: int = 8,
                    power_limit: bool = True) -> RenderableType:
    """GPU rows (memory, utilisation, temperature, power) or the "no GPU" line, then host
    memory, swap and the cache dir's disk. Unreadable fields show N/A."""
    if tel is None:
        return Text("telemetry: reading…", style="dim")
    names = [f"GPU{g.index} {_gpu_name(g.name)}" for g in tel.gpus] + ["host", "swap", "disk"]
    table = Table.grid(padding=(0, 1))
    # The last column absorbs a narrow panel (ellipsis); the others keep their width.
    table.add_column(no_wrap=True, style="bold", min_width=max(len(n) for n in names))
    if bar_width:
        table.add_column(no_wrap=True, width=bar_width)
    table.add_column(no_wrap=True, justify="right", min_width=13)  # used/total
    table.add_column(no_wrap=True, overflow="ellipsis")  # extra

    def row(what: str, used: int | None, total: int | None, extra: str | Text = "") -> None:
        frac = fmt.occupancy(used, total)
        cells: list[RenderableType] = [what]
        if bar_width:
            cells.append(fmt.bar(frac, bar_width))
        cells += [fmt.fmt_used_total(used, total), extra]
        table.add_row(*cells)

    for gpu in tel.gpus:
        row(f"GPU{gpu.index} {_gpu_name(gpu.name)}", gpu.memory_used_bytes, gpu.memory_total_bytes,
            _gpu_extra(gpu, power_limit))
    host = tel.host
    row("host", host.memory_used_bytes, host.memory_total_bytes)
    row("swap", host.swap_used_bytes, host.swap_total_bytes)
    if tel.disk is not None:
        disk = tel.disk
        row("disk", disk.used_bytes, disk.total_bytes, Text(f"free {fmt.fmt_bytes(disk.free_bytes)}",
                                                            style="dim"))
    if tel.gpus:
        return table
    return Group(Text(tel.gpu_status or "no GPU", style="yellow", no_wrap=True,
                      overflow="ellipsis"), table)


def telemetry_compact(tel: Telemetry | None) -> list[Text]:
    """Short terminals: one line per GPU, then host, swap and disk on one line, no bars."""
    if tel is None:
        return [Text("telemetry: reading…", style="dim")]
    lines = [Text(f"GPU{gpu.index} {_gpu_name(gpu.name)} ", style="bold")
             + Text(f"{fmt.fmt_used_total(gpu.memory_used_bytes, gpu.memory_total_bytes)}"
                    f" · {_gpu_extra(gpu)}") for gpu in tel.gpus]
    text = Text()
    if not tel.gpus:
        text.append("no GPU", style="yellow")
        text.append(" · ")
    host, disk = tel.host, tel.disk
    text.append("host ", style="bold")
    text.append(fmt.fmt_used_total(host.memory_used_bytes, host.memory_total_bytes))
    text.append(" · swap ", style="bold")
    text.append(fmt.fmt_used_total(host.swap_used_bytes, host.swap_total_bytes))
    if disk is not None:
        text.append(" · disk ", style="bold")
        text.append(fmt.fmt_used_total(disk.used_bytes, disk.total_bytes))
    lines.append(text)
    return lines


def pin_text(row: Any) -> str:
    if not (row.pin_tier or row.pin_codec):
        return ""
    return "/".join(p for p in (row.pin_tier, row.pin_codec) if p)


def context_cells(row: Any, now: float) -> dict[str, Text]:
    """One contexts row as cells keyed by column key (see query.COLUMNS)."""
    dropped = row.tier in (None, "dropped")
    quality = None if row.quality is None else row.quality
    cells = {
        "id": Text(row.id, style="bold" if row.pin_tier or row.pin_codec else ""),
        "label": Text(row.label or "", style="dim" if not row.label else ""),
        "tenant": Text(row.tenant or ""),
        "tier": Text(row.tier or "unplaced", style="dim" if dropped else _tier_style(row.tier)),
        "codec": Text("-" if dropped else (row.codec or "-")),
        "size": Text("-" if dropped else fmt.fmt_bytes(row.stored_bytes)),
        "ratio": Text("-" if dropped or not row.compression_ratio
                            else fmt.fmt_ratio(row.compression_ratio)),
        "quality": Text("-" if quality is None else f"{quality:.2f}",
                        style=_quality_style(quality, row.quality_floor)),
        "utility": Text("-" if row.utility is None else f"{row.utility:.3g}"),
        "freq": Text(f"{row.freq:.3f}" if row.freq is not None else "-"),
        "hits": Text(str(row.hits)),
        "age": Text(fmt.fmt_age(row.last_access_at, now)),
    }
    return cells


def _tier_style(tier: str | None) -> str:
    return {"gpu": "bold green", "cpu": "cyan", "disk": "blue"}.get(tier or "", "")


def _quality_style(quality: float | None, floor: float | None) -> str:
    if quality is None:
        return "dim"
    if floor is not None and quality < floor:
        return "bold red"
    return "green" if quality >= 0.9 else "yellow" if quality >= 0.7 else "red"


def mark_text(marked: bool, pinned: bool) -> Text:
    text = Text("✓" if marked else " ", style="bold magenta")
    text.append("⚑" if pinned else " ", style="bold blue")
    return text


SORTED_HEADER_STYLE = "bold reverse"


def column_title(column: Column, sort: str | None, descending: bool) -> Text:
    """The sorted column's header is highlighted (its direction is in the table's title)."""
    return Text(column.title, style=SORTED_HEADER_STYLE if column.key == sort else "",
                justify="right" if column.numeric else "left")


def contexts_table(rows: Sequence[Any], now: float, *, columns: Iterable[Column] = COLUMNS,
                   sort: str | None = None, descending: bool = True) -> Table:
    """The contexts as a rich table; column widths as in the live table (query.visible_columns)."""
    table = Table(box=None, padding=(0, 1), show_edge=False, header_style="bold underline")
    cols = list(columns)
    table.add_column("", no_wrap=True, width=2)
    for col in cols:
        table.add_column(column_title(col, sort, descending), no_wrap=True, overflow="ellipsis",
                         justify="right" if col.numeric else "left", width=col.width)
    for row in rows:
        cells = context_cells(row, now)
        table.add_row(mark_text(False, bool(row.pin_tier or row.pin_codec)),
                      *(cells[c.key] for c in cols))
    return table


def event_cells(event: Any, now: float) -> tuple[Text, ...]:
    kind_style = KIND_STYLES.get(event.kind, "")
    move = fmt.fmt_move(event.from_tier, event.from_codec, event.to_tier, event.to_codec)
    actor_style = "bold" if event.actor != "policy" else "dim"
    return (
        Text(fmt.fmt_age(event.ts, now), style="dim"),
        Text(event.kind, style=kind_style),
        Text(event.context_id or "-"),
        Text(move),
        Text(event.reason or ""),
        Text(event.actor, style=actor_style),
    )


def events_table(events: Sequence[Any], now: float, *, max_rows: int | None = None,
                 show_header: bool = True) -> Table:
    """The newest `max_rows` events, oldest first, so the tail reads like a log."""
    table = Table(box=None, padding=(0, 1), expand=True, show_edge=False,
                  show_header=show_header, header_style="bold")
    table.add_column("age", no_wrap=True, justify="right", width=7)
    table.add_column("kind", no_wrap=True, width=9)
    table.add_column("context", no_wrap=True, ratio=2)
    table.add_column("from → to", no_wrap=True, ratio=3)
    table.add_column("reason", no_wrap=True, ratio=3)
    table.add_column("actor", no_wrap=True, ratio=1)
    newest_first = sorted(events, key=lambda e: (e.ts, e.id), reverse=True)
    shown = newest_first[:max_rows] if max_rows is not None else newest_first
    for event in reversed(shown):
        table.add_row(*event_cells(event, now))
    if not events:
        table.add_row("", Text("no events yet", style="dim"), "", "", "", "")
    return table
