"""Save an SVG screenshot of the real dashboard on a database, without a terminal.

    python -m evicctl.tui.screenshot --db PATH -o docs/screenshot.svg [--size 120x40] [--press down]

The app runs headless with its real data path (read-only store, NVML): the picture shows
what `evicctl top` shows on this machine at this moment.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from evicctl.errors import UsageError

SETTLE_TIMEOUT_S = 60.0  # the first detail read loads the codec library (seconds, once)


def save_screenshot(db_path: Path | str, out_path: Path | str, *, size: tuple[int, int] = (120, 40),
                    press: Sequence[str] = (), **app_options: Any) -> Path:
    """Run the app headless until its first frame (and after `press`), save the SVG, exit."""
    from evicctl.tui.app import TopApp
    from evicctl.tui.screens import DetailScreen

    out = Path(out_path)
    app = TopApp(db_path, **app_options)

    async def shoot(pilot: Any) -> None:
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while app.frame is None or app.reading or app.frame.query != app.view:
            if time.monotonic() > deadline:
                break
            await pilot.pause(0.05)
        for key in press:
            await pilot.press(key)
            await pilot.pause(0.1)
        screen = app.screen
        while isinstance(screen, DetailScreen) and screen.detail is None and time.monotonic() < deadline:
            await pilot.pause(0.05)
        await pilot.pause(0.2)
        out.parent.mkdir(parents=True, exist_ok=True)
        app.save_screenshot(filename=out.name, path=str(out.parent))
        app.exit()

    app.run(headless=True, size=size, auto_pilot=shoot)
    return out


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise UsageError(f"--size is WIDTHxHEIGHT, e.g. 120x40; got {text!r}") from None
    if width < 40 or height < 12:
        raise UsageError(f"--size {text} is too small (at least 40x12)")
    return width, height


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Save an SVG screenshot of evicctl top.")
    parser.add_argument("--db", required=True, type=Path)
    parser.add_argument("-o", "--output", type=Path, default=Path("docs/screenshot.svg"))
    parser.add_argument("--size", type=_size, default=(120, 40))
    parser.add_argument("--press", nargs="*", default=(), help="keys to press first (Textual names)")
    parser.add_argument("--sort", default="utility")
    args = parser.parse_args(argv)
    path = save_screenshot(args.db, args.output, size=args.size, press=args.press, sort=args.sort,
                           show_timing=False)
    print(path)


if __name__ == "__main__":
    from evicctl.entry import keep_checkout_root_off_path

    keep_checkout_root_off_path()
    main()
