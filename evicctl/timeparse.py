"""Parsing and formatting of times and sizes at the CLI's edge (`--since 1h`, `256MiB`)."""

from __future__ import annotations

import re
import time
from datetime import datetime

from evicctl.errors import UsageError

_DURATION_UNITS_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3, "t": 1000**4, "tb": 1000**4,
    "ki": 1 << 10, "kib": 1 << 10, "mi": 1 << 20, "mib": 1 << 20, "gi": 1 << 30, "gib": 1 << 30,
    "ti": 1 << 40, "tib": 1 << 40,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?(?:e\d+)?)\s*([a-z]*)\s*$", re.IGNORECASE)


def parse_duration_s(text: str) -> float:
    """`90s`, `5m`, `1h30m`, `2d` -> seconds."""
    compact = text.strip().lower().replace(" ", "")
    parts = _DURATION_RE.findall(compact)
    if not parts or "".join(n + u for n, u in parts) != compact:
        raise UsageError(f"invalid duration {text!r}; examples: 90s, 5m, 1h30m, 2d")
    return sum(float(n) * _DURATION_UNITS_S[u] for n, u in parts)


def parse_since(text: str, now: float | None = None) -> float:
    """`--since`: a duration back from now (`1h`) or a local ISO time (`2026-11-29T10:00`)."""
    now = time.time() if now is None else now
    try:
        return now - parse_duration_s(text)
    except UsageError:
        pass
    try:
        return datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        raise UsageError(
            f"invalid --since {text!r}; use a duration (30m, 1h, 2d) or a time (2026-11-29T10:00)"
        ) from None


def parse_size_bytes(text: str) -> int:
    """`256MiB`, `2G`, `1.5GiB`, `1000000` -> bytes (KiB/MiB/GiB are powers of 2, KB/MB/GB of 10)."""
    m = _SIZE_RE.match(text)
    unit = m.group(2).lower() if m else None
    if not m or unit not in _SIZE_UNITS:
        raise UsageError(f"invalid size {text!r}; examples: 256MiB, 2GiB, 500MB, 1000000")
    return int(float(m.group(1)) * _SIZE_UNITS[unit])


def format_size(n_bytes: int) -> str:
    """The shortest text parse_size_bytes reads back as exactly n_bytes: 64MiB, 1GiB, 1000."""
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n_bytes >= scale and n_bytes % scale == 0:
            return f"{n_bytes // scale}{unit}"
    return str(n_bytes)
