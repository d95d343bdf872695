"""Text formatting shared by the live dashboard and `top --once`: units, ages, bars, sparklines.

Pure functions of their arguments (the clock is passed in), so output is deterministic in
tests. None always renders as "N/A".
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text

from evicctl.units import (  # noqa: F401 (the dashboard's modules read them as fmt.*)
    NA,
    fmt_age,
    fmt_ago,
    fmt_bps,
    fmt_bytes,
    fmt_duration,
    fmt_float,
    fmt_pct,
    fmt_ratio,
    fmt_ttft,
)
from evicctl.units import (
    SPARK as _SPARK,
)

# Occupancy at which a tier bar turns yellow, then red. The placer starts demoting or
# compressing when a tier is full, so red means "the next admit causes moves".
PRESSURE_WARN = 0.75
PRESSURE_HIGH = 0.90


def fmt_used_total(used: float | None, total: float | None) -> str:
    """"12.0/31.0 GiB": both in the total's unit, so the pair reads at a glance."""
    if used is None or total is None:
        return f"{fmt_bytes(used)}/{fmt_bytes(total)}"
    total_text = fmt_bytes(total)
    unit = total_text.split(" ")[1]
    scale = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}[unit]
    value = used / scale
    digits = 0 if unit == "B" or value >= 100 else 1 if value >= 10 else 2
    return f"{value:.{digits}f}/{total_text}"


def fmt_place(tier: str | None, codec: str | None) -> str:
    if tier is None and codec is None:
        return "-"
    if tier == "dropped":
        return "dropped"
    return "/".join(part for part in (tier, codec) if part)


def fmt_move(from_tier: str | None, from_codec: str | None,
             to_tier: str | None, to_codec: str | None) -> str:
    before, after = fmt_place(from_tier, from_codec), fmt_place(to_tier, to_codec)
    if before == "-":
        return after
    if after == "-":
        return before
    return f"{before} → {after}"


def pressure_style(fraction: float | None) -> str:
    if fraction is None:
        return "dim"
    if fraction >= PRESSURE_HIGH:
        return "bold red"
    if fraction >= PRESSURE_WARN:
        return "yellow"
    return "green"


def occupancy(used_bytes: int | None, capacity_bytes: int | None) -> float | None:
    if used_bytes is None or not capacity_bytes:
        return None
    return used_bytes / capacity_bytes


def bar(fraction: float | None, width: int) -> Text:
    """A used/capacity bar coloured by pressure; eighth-blocks give sub-cell resolution."""
    width = max(1, width)
    if fraction is None:
        return Text("·" * width, style="dim")
    f = min(max(fraction, 0.0), 1.0)
    eighths = round(f * width * 8)
    full, part = divmod(eighths, 8)
    filled = "█" * full + (" ▏▎▍▌▋▊▉"[part] if part and full < width else "")
    text = Text(filled, style=pressure_style(fraction))
    text.append("·" * (width - len(filled)), style="dim")
    return text


def sparkline(values: Sequence[float], width: int) -> Text:
    """The last `width` values (fractions of capacity, 0..1) as block characters."""
    if not values:
        return Text("".ljust(width), style="dim")
    tail = list(values)[-width:]
    chars = "".join(_SPARK[min(7, max(0, int(v * 8)))] if v > 0 else " " for v in tail)
    last = tail[-1]
    return Text(chars.rjust(width), style=pressure_style(last))


def fmt_hit_rate(rate: float | None) -> str:
    return "-" if rate is None else fmt_pct(rate)
