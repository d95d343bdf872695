"""Shared fixtures: real SQLite files in tmp_path, a populated fixture database, a CLI
runner that keeps stdout and stderr apart, and a manager-side control loop in a thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from evicctl.store.synthetic import FIXTURE_NOW, FixtureInfo, make_fixture_db

__all__ = ["FIXTURE_NOW", "FixtureInfo", "make_fixture_db"]


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """A path for a new database (the file does not exist yet)."""
    return tmp_path / "state" / "evicctl.db"


@pytest.fixture(name="make_fixture_db")
def make_fixture_db_fixture() -> Callable[..., FixtureInfo]:
    """`make_fixture_db(path, n_contexts, seed, **options)` for tests that need their own."""
    return make_fixture_db


@pytest.fixture
def fixture_db(tmp_path: Path) -> FixtureInfo:
    """50 contexts, three tiers, a stale manager row (fixed clock: FIXTURE_NOW)."""
    return make_fixture_db(tmp_path / "fixture.db", 50, seed=0)


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str


@pytest.fixture
def run_cli(monkeypatch) -> Callable[..., CliResult]:
    """Run `evicctl ARGS` in-process through the real entry point's error handling."""
    from typer.testing import CliRunner

    from evicctl.cli import app

    def run(*args: str, env: dict | None = None, input: str | None = None) -> CliResult:
        monkeypatch.delenv("EVICCTL_DB", raising=False)
        result = CliRunner().invoke(app, [str(a) for a in args], env=env, input=input, catch_exceptions=False)
        return CliResult(result.exit_code, result.stdout, result.stderr)

    return run


def default_handler(store):
    """A small stand-in for the manager's command handler, writing real events."""
    from evicctl.errors import NoSuchContextError, RefusedError

    def handle(command) -> dict:
        known = store.query("SELECT 1 FROM contexts WHERE id = ?", (command.context_id,))
        if not known:
            raise NoSuchContextError(command.context_id)
        if command.args.get("tier") == "gpu":
            raise RefusedError("does not fit: gpu has 2.1 MiB free, the context needs 18.3 MiB")
        batch = store.batch()
        batch.upsert("contexts", {"id": command.context_id, "pin_tier": command.args.get("tier")})
        batch.event(kind=command.verb, context_id=command.context_id, to_tier=command.args.get("tier"),
                    reason="operator", actor=command.actor, command_id=command.id)
        ids = store.flush(batch)
        return {"message": f"{command.verb} applied", "plan": [], "event_ids": ids}

    return handle


class ManagerThread:
    """A ControlServer polling in a thread, as the manager's control loop does."""

    def __init__(self, path: Path, handler_factory=default_handler, tick_s: float = 0.01) -> None:
        from evicctl.control import ControlServer
        from evicctl.store.database import Store

        self.store = Store.open(path)
        self.server = ControlServer(self.store, "test", {"alpha": 2.0, "heartbeat_timeout_s": 5.0})
        self.handler = handler_factory(self.store)
        self.tick_s = tick_s
        self.handled = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> ManagerThread:
        self.server.heartbeat()
        self._thread.start()
        return self

    def _loop(self) -> None:
        last_beat = time.monotonic()
        while not self._stop.is_set():
            self.handled += self.server.poll(self.handler)
            if time.monotonic() - last_beat > 0.5:
                self.server.heartbeat()
                last_beat = time.monotonic()
            time.sleep(self.tick_s)

    def stop(self, mark_stopped: bool = True) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if mark_stopped:
            self.server.stop()
        self.store.close()


@pytest.fixture
def manager_thread():
    """Start a control loop on a database: `manager_thread(path, handler_factory=...)`."""
    started: list[ManagerThread] = []

    def start(path: Path, handler_factory=default_handler) -> ManagerThread:
        m = ManagerThread(path, handler_factory).start()
        started.append(m)
        return m

    yield start
    for m in started:
        if m._thread.is_alive():
            m.stop()
