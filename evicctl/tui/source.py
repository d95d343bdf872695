"""The dashboard's data path: one read-only store connection and NVML, read off the UI thread.

`DashboardSource.read(query)` returns one immutable `Frame` (snapshot + telemetry + how long
the read took). It runs in a Textual thread worker; the UI thread only renders frames.
Errors never escape: a missing or broken database becomes `Frame.error`, telemetry
degrades to N/A on its own.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from evicctl.errors import EvicctlError
from evicctl.telemetry import Telemetry, TelemetryReader, disk_folder
from evicctl.tui.query import ViewQuery

EVENTS_LIMIT = 50  # the events panel shows at most this many (its height is far less)


class TelemetrySource(Protocol):
    def read(self) -> Telemetry: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Frame:
    """What one refresh read. `snapshot` is None only when the store could not be read."""

    query: ViewQuery
    snapshot: Any  # evicctl.snapshot.read.Snapshot
    telemetry: Telemetry
    error: str | None
    read_s: float  # worker time for the whole read (store + telemetry)
    store_s: float  # of which the store's read_snapshot


class DashboardSource:
    """Reads frames and context details. Thread-safe; reads are serialised by a lock."""

    def __init__(self, db_path: Path | str, *, telemetry: TelemetrySource | None = None,
                 clock: Callable[[], float] = time.time, follow_manager_disk: bool = False) -> None:
        """follow_manager_disk: point the telemetry reader's disk row at the folder the
        manager's description names (re-read every frame: a manager may start later)."""
        self.db_path = Path(db_path)
        self.follow_manager_disk = follow_manager_disk
        self.clock = clock
        self.telemetry = telemetry if telemetry is not None else TelemetryReader()
        self._store: Any = None
        self._lock = threading.Lock()

    def _open(self) -> Any:
        if self._store is None:
            from evicctl.store.database import Store

            self._store = Store.open(self.db_path, readonly=True)
        return self._store

    def _drop(self) -> None:
        """Forget a connection that failed, so the next read opens the file afresh."""
        if self._store is not None:
            with contextlib.suppress(Exception):  # already broken; nothing more to release
                self._store.close()
            self._store = None

    def read(self, query: ViewQuery) -> Frame:
        from evicctl.snapshot.read import read_snapshot

        start = time.perf_counter()
        snapshot, error = None, None
        with self._lock:
            try:
                snapshot = read_snapshot(
                    self._open(), sort=query.sort, descending=query.descending,
                    tier=query.filter.tier, tenant=query.filter.tenant,
                    search=query.filter.search, limit=query.limit, offset=query.offset,
                    events_limit=EVENTS_LIMIT, now=self.clock(),
                )
            except EvicctlError as exc:
                error = str(exc)
                self._drop()
            except Exception as exc:  # sqlite3 errors mid-read: show them, keep running
                error = f"cannot read {self.db_path}: {exc}"
                self._drop()
        store_s = time.perf_counter() - start
        if self.follow_manager_disk and snapshot is not None and isinstance(self.telemetry, TelemetryReader):
            self.telemetry.disk_path = disk_folder(snapshot.manager.description if snapshot.manager else None)
        telemetry = self.telemetry.read()
        return Frame(query=query, snapshot=snapshot, telemetry=telemetry, error=error,
                     read_s=time.perf_counter() - start, store_s=store_s)

    def read_detail(self, context_id: str) -> Any:
        """`read_context` for the detail screen; raises NoSuchContextError / StoreError."""
        from evicctl.snapshot.detail import read_context

        with self._lock:
            try:
                return read_context(self._open(), context_id)
            except EvicctlError:
                raise
            except Exception as exc:
                self._drop()
                raise EvicctlError(f"cannot read {self.db_path}: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._drop()
        self.telemetry.close()
