"""`evicctl top`: the live operator dashboard (Textual).

Data path: a timer asks for a refresh; a thread worker reads one `Frame` (read-only store
snapshot of the rows on screen + telemetry) and posts it; the UI thread only renders it.
Actions write one row per context in `commands` through `ControlClient`, in a worker too,
and the manager's answer comes back as a notification.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from textual import work
from textual.app import App, SystemCommand
from textual.screen import Screen

from evicctl.errors import EvicctlError, UsageError
from evicctl.telemetry import TelemetryReader
from evicctl.tui.actions import WAIT_TIMEOUT_S, Outcome, Request, perform
from evicctl.tui.flows import ActionFlows
from evicctl.tui.main_screen import ActionDone, FrameReady, MainScreen, bindings
from evicctl.tui.query import COLUMN_BY_KEY, SORT_KEYS, ViewQuery, parse_sort
from evicctl.tui.screens import DetailReady, DetailScreen, HelpScreen
from evicctl.tui.source import DashboardSource, Frame, TelemetrySource

MIN_INTERVAL_S = 0.25  # below this the refresh itself becomes a visible share of a core


class TopApp(ActionFlows, App[None]):
    """The dashboard. `clock` and `telemetry` are injectable so tests render deterministically."""

    CSS_PATH = "top.tcss"
    TITLE = "evicctl top"
    BINDINGS = bindings("app")

    def __init__(
        self,
        db_path: Path | str,
        *,
        interval_s: float = 1.0,
        readonly: bool = False,
        sort: str = "utility",
        clock: Callable[[], float] = time.time,
        telemetry: TelemetrySource | None = None,
        show_timing: bool = True,
        action_timeout_s: float = WAIT_TIMEOUT_S,
    ) -> None:
        super().__init__()
        if interval_s < MIN_INTERVAL_S:
            raise UsageError(f"--interval must be at least {MIN_INTERVAL_S} s, got {interval_s:g}")
        sort_key, descending = parse_sort(sort)
        self.db_path = Path(db_path)
        self.interval_s = float(interval_s)
        self.readonly = readonly
        self.clock = clock
        self.show_timing = show_timing
        self.action_timeout_s = action_timeout_s
        self.source = DashboardSource(  # without a given reader, measure the manager's disk folder
            self.db_path, telemetry=telemetry if telemetry is not None else TelemetryReader(),
            clock=clock, follow_manager_disk=telemetry is None)
        self.view = ViewQuery(sort=sort_key, descending=descending)
        self.paused = False
        self.frame: Frame | None = None
        self.last_outcome: Outcome | None = None
        self.notices: list[tuple[str, str, str]] = []  # (title, message, severity), all shown
        self._reading = False
        self._again = False


    @property
    def reading(self) -> bool:
        """A snapshot read is in flight (the frame on screen may be about to change)."""
        return self._reading

    def get_default_screen(self) -> MainScreen:
        return MainScreen()

    @property
    def main(self) -> MainScreen:
        return self.screen_stack[0]  # type: ignore[return-value]

    @property
    def has_main(self) -> bool:
        """False while shutting down: a worker's late message finds no screens to update."""
        return bool(self.screen_stack) and isinstance(self.screen_stack[0], MainScreen)

    def on_mount(self) -> None:
        self.set_interval(self.interval_s, self._tick)
        self.call_after_refresh(self.window_resized)

    def on_unmount(self) -> None:
        self.source.close()

    # ---- refresh ------------------------------------------------------------------------
    def _tick(self) -> None:
        if not self.screen_stack:  # the interval can fire once more while the app shuts down
            return
        if not self.paused and not isinstance(self.screen, DetailScreen):
            self.request_refresh()

    def window_resized(self) -> None:
        limit = self.main.table.window_rows
        if limit != self.view.limit:
            self.set_query(self.view.with_limit(limit))
        elif self.frame is None:
            self.request_refresh()

    def set_query(self, query: ViewQuery) -> None:
        """A new question (scroll, sort, filter, size): read now, even when paused."""
        if query == self.view:
            return
        self.view = query
        self.request_refresh()

    def request_refresh(self) -> None:
        if self._reading:
            self._again = True  # one read in flight at a time; ask again when it lands
            return
        self._reading = True
        self._read_frame(self.view)

    @work(thread=True, group="refresh")
    def _read_frame(self, query: ViewQuery) -> None:
        frame = self.source.read(query)
        self.post_message(FrameReady(frame))

    def on_frame_ready(self, message: FrameReady) -> None:
        self._reading = False
        if not self.has_main:
            return
        frame = message.frame
        snapshot = frame.snapshot
        if frame.query == self.view:
            if snapshot is not None and frame.query.offset and frame.query.offset >= snapshot.contexts_total:
                # Rows vanished under the window (filter, drops): step back to the last page.
                self.view = frame.query.scrolled_to(frame.query.offset, snapshot.contexts_total)
                self._again = True
            else:
                self.frame = frame
                now = snapshot.taken_at if snapshot is not None else self.clock()
                self.main.show_frame(frame, now)
        else:
            self._again = True  # the question changed while reading: this answer is stale
        if self._again:
            self._again = False
            self.request_refresh()

    # ---- detail -------------------------------------------------------------------------
    @work(thread=True, group="detail")
    def load_detail(self, context_id: str, screen: DetailScreen) -> None:
        try:
            detail, error = self.source.read_detail(context_id), None
        except EvicctlError as exc:
            detail, error = None, str(exc)
        screen.post_message(DetailReady(context_id, detail, error))

    def notify(self, message: str, *, title: str = "", severity: Any = "information",
               timeout: float | None = None, markup: bool = False) -> None:
        """Textual's notify, recorded; markup off by default since ids and reasons are data."""
        self.notices.append((title, str(message), str(severity)))
        super().notify(message, title=title, severity=severity, timeout=timeout, markup=markup)

    # ---- actions ------------------------------------------------------------------------
    def refuse_readonly(self) -> None:
        self.notify("read-only dashboard (--readonly): pin, unpin, evict and recompress are off",
                    title="refused", severity="warning")

    def start_action(self, verb: str, targets: tuple[str, ...]) -> None:
        """Ask what is needed (picker, confirmation), then submit the commands."""
        if self.readonly:
            self.refuse_readonly()
            return
        if not targets:
            self.notify("no context selected", severity="warning")
            return
        flows = {"pin": self._ask_pin, "unpin": self._ask_unpin, "evict": self._ask_evict,
                 "recompress": self._ask_recompress}
        flows[verb](targets)

    def submit(self, request: Request) -> None:
        self.notify(f"{request.describe()}: sent, waiting for the manager…", timeout=2)
        self._perform(request)

    @work(thread=True, group="actions")
    def _perform(self, request: Request) -> None:
        outcome = perform(self.db_path, request, timeout_s=self.action_timeout_s)
        self.post_message(ActionDone(request, outcome))

    def on_action_done(self, message: ActionDone) -> None:
        outcome = message.outcome
        self.last_outcome = outcome
        if not self.has_main:
            return
        self.notify(outcome.message, title=outcome.title, severity=outcome.severity,
                    timeout=4 if outcome.severity == "information" else 10)
        table = self.main.table
        if outcome.statuses and all(s == "done" for s in outcome.statuses):
            table.marked.difference_update(message.request.context_ids)
            table.refresh_marks()
        self.request_refresh()
        if isinstance(self.screen, DetailScreen):
            self.load_detail(self.screen.context_id, self.screen)

    # ---- app keys -----------------------------------------------------------------------
    def action_pause(self) -> None:
        self.paused = not self.paused
        if self.frame is not None:
            now = self.frame.snapshot.taken_at if self.frame.snapshot is not None else self.clock()
            self.main.show_frame(self.frame, now)
        if not self.paused:
            self.request_refresh()

    def action_theme(self) -> None:
        self.theme = "textual-light" if self.theme == "textual-dark" else "textual-dark"

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(self.readonly))

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        main = self.main
        if not self.readonly:
            for verb in ("pin", "unpin", "evict", "recompress"):
                yield SystemCommand(f"{verb.capitalize()} selected", f"{verb} the selected or marked contexts",
                                    lambda v=verb: self.start_action(v, main.table.targets()))
        for key in SORT_KEYS:
            yield SystemCommand(f"Sort by {COLUMN_BY_KEY[key].title}", f"sort the contexts by {key}",
                                lambda k=key: self.set_query(self.view.sorted_by(k)))
        yield SystemCommand("Filter contexts", "substring, tier:, tenant:, codec:, pinned",
                            main.action_filter)
        yield SystemCommand("Pause / resume updates", "stop or restart the refresh", self.action_pause)
        yield SystemCommand("Toggle light / dark", "switch the theme", self.action_theme)
        yield SystemCommand("Keys", "every key of evicctl top", self.action_help)


def run_top(db_path: Path | str, interval_s: float = 1.0, readonly: bool = False,
            sort: str = "utility") -> None:
    """Run the dashboard in this terminal. UsageError without a terminal or on bad flags;
    StoreError when the database cannot be opened (checked before the screen changes)."""
    if interval_s < MIN_INTERVAL_S:
        raise UsageError(f"--interval must be at least {MIN_INTERVAL_S} s, got {interval_s:g}")
    parse_sort(sort)
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise UsageError("evicctl top needs a terminal; for one snapshot that works when piped, "
                         "use evicctl top --once")
    from evicctl.store.database import Store

    Store.open(db_path, readonly=True).close()
    TopApp(db_path, interval_s=interval_s, readonly=readonly, sort=sort).run()
