"""How numbers are written for people: bytes, bandwidths, durations, ages, ratios, times.

One module for the CLI's tables, `show`, the dashboard and the bench report, so a value reads
the same on every screen. Pure functions (the clock is passed in where one is needed); an
unknown value (None) always renders as "N/A".
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime

NA = "N/A"
SPARK = "▁▂▃▄▅▆▇█"


def fmt_bytes(n: float | None) -> str:
    """Binary units, about 3 significant digits: 512 B, 1.50 KiB, 12.3 MiB, 139 GiB."""
    if n is None:
        return NA
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            break
        value /= 1024
    if unit == "B":
        return f"{int(value)} B"
    digits = 0 if abs(value) >= 100 else 1 if abs(value) >= 10 else 2
    return f"{value:.{digits}f} {unit}"


def fmt_bps(bps: float | None) -> str:
    """Decimal bandwidth (how disks and links are quoted): 55.0 GB/s, 600 MB/s."""
    if bps is None or bps <= 0:
        return NA if bps is None else "-"
    value = float(bps)
    for unit in ("B/s", "kB/s", "MB/s", "GB/s", "TB/s"):
        if value < 1000 or unit == "TB/s":
            break
        value /= 1000
    digits = 0 if value >= 100 else 1 if value >= 10 else 2
    return f"{value:.{digits}f} {unit}"


def fmt_duration(seconds: float | None) -> str:
    """Compact duration: 0.4s, 42s, 4m12s, 2h05m, 3d04h."""
    if seconds is None:
        return NA
    s = max(0.0, float(seconds))
    if s < 10:
        return f"{s:.1f}s"
    if s < 60:
        return f"{int(s)}s"
    minutes, sec = divmod(int(s), 60)
    if minutes < 60:
        return f"{minutes}m{sec:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def fmt_ago(ts: float | None, now: float) -> str:
    if ts is None:
        return NA
    return f"{fmt_duration(now - ts)} ago"


def fmt_age(ts: float | None, now: float) -> str:
    """Age without the word "ago", for narrow table cells."""
    return NA if ts is None else fmt_duration(now - ts)


def fmt_pct(fraction: float | None, digits: int = 0) -> str:
    return NA if fraction is None else f"{100 * fraction:.{digits}f}%"


def fmt_float(x: float | None, digits: int = 2) -> str:
    return NA if x is None else f"{x:.{digits}f}"


def fmt_ratio(ratio: float | None) -> str:
    """Compression vs raw as raw/stored: 1.0x, 3.8x."""
    return NA if ratio is None else f"{ratio:.1f}x"


def fmt_ttft(seconds: float | None) -> str:
    if seconds is None:
        return NA
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def decimals(digits: int):
    """A table column's formatter: fmt_float with a fixed number of digits."""
    return lambda x: fmt_float(x, digits)


def fmt_int(n: int | None) -> str:
    return NA if n is None else f"{n:,}"


def fmt_time(ts: float | None) -> str:
    """Local wall-clock time, to the second."""
    return NA if ts is None else datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def fmt_ago_now(ts: float | None) -> str:
    """fmt_ago against the current clock (the CLI's one-shot outputs)."""
    return fmt_ago(ts, time.time())


def sparkline(fractions: Sequence[float], width: int = 20) -> str:
    """The last `width` fractions (0-1) as block characters."""
    pts = list(fractions)[-width:]
    return "".join(SPARK[min(len(SPARK) - 1, max(0, int(v * len(SPARK))))] for v in pts)
