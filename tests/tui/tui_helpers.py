"""Helpers for the dashboard tests: fixed telemetry, a fake manager, waiting on the app.

The fake manager is a real `ControlServer` on the real database, polled by a thread, with
a scripted handler: these tests are of the layer above the manager, so its decisions are
canned, but every command row and outcome goes through the real control channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from evicctl.control import Command, ControlServer
from evicctl.errors import RefusedError
from evicctl.store.database import Store
from evicctl.store.synthetic import FIXTURE_NOW, make_fixture_db  # noqa: F401 (re-exported)
from evicctl.telemetry import DiskTelemetry, GpuTelemetry, HostTelemetry, Telemetry
from evicctl.tui.app import TopApp

GIB = 1 << 30


class FixedTelemetry:
    """Telemetry that never changes, so screenshots are reproducible."""

    def __init__(self, gpus: tuple[GpuTelemetry, ...] = (),
                 gpu_status: str | None = "no GPU (NVML library not found)") -> None:
        self.telemetry = Telemetry(
            taken_at=FIXTURE_NOW,
            gpus=gpus,
            gpu_status=None if gpus else gpu_status,
            host=HostTelemetry(12 * GIB, 31 * GIB, 0, 2 * GIB),
            disk=DiskTelemetry("/var/cache/evicctl", 120 * GIB, 500 * GIB, 380 * GIB),
        )
        self.closed = False

    def read(self) -> Telemetry:
        return self.telemetry

    def close(self) -> None:
        self.closed = True


H200 = GpuTelemetry(0, "NVIDIA H200", 45 * GIB, 141 * GIB, 37.0, 45.0, 312.0, 700.0)


def make_app(db_path: Path | str, **kwargs: Any) -> TopApp:
    """The real app on a fixed clock with fixed telemetry and no timing in the header."""
    options: dict[str, Any] = {"clock": lambda: FIXTURE_NOW, "telemetry": FixedTelemetry(),
                               "show_timing": False, "interval_s": 0.5}
    options.update(kwargs)
    return TopApp(db_path, **options)


async def wait_for(pilot: Any, condition: Callable[[], bool], timeout_s: float = 15.0) -> None:
    """Let the app run until `condition()` holds (workers are threads: poll, do not guess)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await pilot.pause(0.02)
        await asyncio.sleep(0)


async def loaded(pilot: Any) -> TopApp:
    """Wait until the window on screen is the one read: the layout has settled."""
    app = pilot.app

    def settled() -> bool:
        table = app.main.table
        return (app.frame is not None and app.frame.query == app.view and table.row_count > 0
                and app.view.limit == table.window_rows and not app._reading)

    await wait_for(pilot, settled)
    return app


def screen_text(app: TopApp) -> str:
    """The screen as plain text, as a terminal would show it."""
    import io

    from rich.console import Console

    width, height = app.size
    console = Console(width=width, height=height, file=io.StringIO(), record=True,
                      force_terminal=True, legacy_windows=False, safe_box=False)
    console.print(app.screen._compositor.render_update(
        full=True, screen_stack=app._background_screens, simplify=True))
    return console.export_text()


def notifications(app: TopApp) -> list[tuple[str, str, str]]:
    """(title, message, severity) of every notification shown so far (expired ones too)."""
    return list(app.notices)


class FakeManager:
    """Heartbeats and answers commands from a thread, like the manager's control loop."""

    def __init__(self, db_path: Path) -> None:
        self.store = Store.open(db_path)
        self.server = ControlServer(self.store, "0.1.0", {"heartbeat_timeout_s": 5.0,
                                                          "codecs": ["none", "int8", "int4"]})
        self.handled: list[Command] = []
        self.refuse: dict[str, str] = {}  # verb -> refusal reason
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def handle(self, command: Command) -> dict:
        self.handled.append(command)
        if command.verb in self.refuse:
            raise RefusedError(self.refuse[command.verb])
        return {"message": f"{command.verb} applied to {command.context_id}", "event_ids": []}

    def _run(self) -> None:
        while not self._stop.is_set():
            self.server.heartbeat()
            self.server.poll(self.handle)
            time.sleep(0.02)

    def __enter__(self) -> FakeManager:
        self.server.heartbeat()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.server.stop()
        self.store.close()


def command_rows(db_path: Path) -> list[dict]:
    """The operator commands written after the fixture's own (which is command 1)."""
    import json

    with contextlib.closing(Store.open(db_path, readonly=True)) as store:
        rows = store.query("SELECT id, verb, context_id, args_json, status, actor, result"
                           " FROM commands WHERE id > 1 ORDER BY id")
    return [{**dict(r), "args": json.loads(r["args_json"])} for r in rows]
