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

from textual import on, work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Input

from evicctl.errors import EvicctlError, UsageError
from evicctl.tui import keys
from evicctl.tui.actions import WAIT_TIMEOUT_S, Outcome, Request, perform
from evicctl.tui.query import COLUMN_BY_KEY, SORT_KEYS, ViewQuery, parse_filter, parse_sort
from evicctl.tui.screens import (
    Choice,
    ConfirmScreen,
    DetailReady,
    DetailScreen,
    HelpScreen,
    PickerScreen,
)
from evicctl.tui.source import DashboardSource, Frame, TelemetrySource
from evicctl.tui.telemetry import TelemetryReader, cache_dir_from_config
from evicctl.tui.widgets import ContextTable, EventsPanel, HeaderBar, TelemetryPanel, TiersPanel

MIN_INTERVAL_S = 0.25  # below this the refresh itself becomes a visible share of a core
NARROW_WIDTH = 140  # below: telemetry goes under the tiers, columns give way
SHORT_HEIGHT = 32  # below: a shorter events panel


def _bindings(scope: str) -> list[Binding]:
    return [
        Binding(k.keys, k.action, k.label, show=k.footer)
        for k in keys.APP_KEYS
        if k.scope == scope and k.action != "command_palette"  # Textual binds Ctrl+P itself
    ]


class FrameReady(Message):
    def __init__(self, frame: Frame) -> None:
        super().__init__()
        self.frame = frame


class ActionDone(Message):
    def __init__(self, request: Request, outcome: Outcome) -> None:
        super().__init__()
        self.request, self.outcome = request, outcome


class MainScreen(Screen[None]):
    """Header, tiers + telemetry, contexts, events, filter line, footer."""

    BINDINGS = _bindings("main")
    app: TopApp

    def compose(self) -> ComposeResult:
        yield HeaderBar(id="header")
        with Horizontal(id="top"):
            tiers = TiersPanel(id="tiers")
            tiers.border_title = "tiers"
            yield tiers
            telemetry = TelemetryPanel(id="telemetry")
            telemetry.border_title = "host"
            yield telemetry
        table = ContextTable(id="contexts")
        table.border_title = "contexts"
        yield table
        events = EventsPanel(id="events")
        events.border_title = "events"
        yield events
        yield Input(placeholder="filter: words · tier:gpu · tenant:acme · codec:int8 · pinned"
                    "   (Enter keeps, Esc clears)", id="filter", compact=True)
        yield Footer()

    @property
    def table(self) -> ContextTable:
        return self.query_one(ContextTable)

    def on_mount(self) -> None:
        self.table.focus()
        self._layout_classes()

    def on_resize(self) -> None:
        self._layout_classes()

    def _layout_classes(self) -> None:
        width, height = self.app.size
        self.set_class(width < NARROW_WIDTH, "-narrow")
        self.set_class(height < SHORT_HEIGHT, "-short")
        self.query_one(TelemetryPanel).set_compact(height < SHORT_HEIGHT and width < NARROW_WIDTH)

    # ---- rendering a frame ------------------------------------------------------------
    def show_frame(self, frame: Frame, now: float) -> None:
        if not self.query(HeaderBar):
            return  # not composed yet; the next tick shows the next frame
        app = self.app
        snapshot = frame.snapshot
        manager = snapshot.manager if snapshot is not None else None
        self.query_one(HeaderBar).show(
            manager, now, db_path=str(app.db_path), paused=app.paused, error=frame.error,
            read_ms=frame.read_s * 1000 if app.show_timing else None)
        self.query_one(TelemetryPanel).show(frame.telemetry)
        if snapshot is None:
            return
        tiers = self.query_one(TiersPanel)
        tiers.show(snapshot.tiers)
        tiers.border_subtitle = f"misses {snapshot.misses_total:,}"
        table = self.table
        table.show(snapshot.contexts, offset=frame.query.offset, total=snapshot.contexts_total,
                   now=now, sort=(frame.query.sort, frame.query.descending))
        self._titles(frame)
        self.query_one(EventsPanel).show(snapshot.events, now)

    def _titles(self, frame: Frame) -> None:
        table = self.table
        flt = frame.query.filter
        table.border_title = "contexts" + (f" · filter {flt.text}" if flt.active else "")
        table.border_subtitle = table.describe_window()

    # ---- keys ---------------------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # False hides the binding from the footer; on_key then refuses the key out loud.
        return not (self.app.readonly and action in keys.MUTATING_ACTIONS)

    def on_key(self, event: Any) -> None:
        if self.app.readonly and event.key in keys.MUTATING_KEYS:
            event.stop()
            self.app.refuse_readonly()

    def action_pin(self) -> None:
        self.app.start_action("pin", self.table.targets())

    def action_unpin(self) -> None:
        self.app.start_action("unpin", self.table.targets())

    def action_evict(self) -> None:
        self.app.start_action("evict", self.table.targets())

    def action_recompress(self) -> None:
        self.app.start_action("recompress", self.table.targets())

    def action_sort_next(self) -> None:
        self.app.set_query(self.app.view.next_sort(+1))

    def action_sort_previous(self) -> None:
        self.app.set_query(self.app.view.next_sort(-1))

    def action_sort_invert(self) -> None:
        self.app.set_query(self.app.view.inverted())

    def action_mark_all(self) -> None:
        table = self.table
        table.marked.update(table.order)
        table.refresh_marks()
        table.border_subtitle = table.describe_window()

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        self._filter_before = self.app.view.filter
        box.value = self.app.view.filter.text
        box.display = True
        box.focus()

    def action_clear(self) -> None:
        box = self.query_one("#filter", Input)
        if box.display:  # Esc while typing: drop the edit, restore the filter before it
            box.display = False
            self.app.set_query(self.app.view.filtered(getattr(self, "_filter_before",
                                                                self.app.view.filter)))
            self.table.focus()
            return
        table = self.table
        if table.marked:
            table.marked.clear()
            table.refresh_marks()
            table.border_subtitle = table.describe_window()
        elif self.app.view.filter.active:
            self.app.set_query(self.app.view.filtered(parse_filter("")))

    @on(Input.Changed, "#filter")
    def _filter_typed(self, event: Input.Changed) -> None:
        try:
            flt = parse_filter(event.value)
        except UsageError:
            return  # half-typed term; Enter reports it
        self.app.set_query(self.app.view.filtered(flt))

    @on(Input.Submitted, "#filter")
    def _filter_done(self, event: Input.Submitted) -> None:
        try:
            flt = parse_filter(event.value)
        except UsageError as exc:
            self.app.notify(str(exc), title="filter", severity="error")
            return
        self.app.set_query(self.app.view.filtered(flt))
        event.input.display = False
        self.table.focus()

    @on(DataTable.HeaderSelected, "#contexts")
    def _header_clicked(self, event: DataTable.HeaderSelected) -> None:
        key = event.column_key.value
        if key not in COLUMN_BY_KEY:
            return
        view = self.app.view
        self.app.set_query(view.inverted() if view.sort == key else view.sorted_by(key))

    @on(DataTable.RowSelected, "#contexts")
    def _row_chosen(self, event: DataTable.RowSelected) -> None:
        if event.row_key.value is not None:
            self.app.push_screen(DetailScreen(event.row_key.value, readonly=self.app.readonly))

    @on(ContextTable.Scroll)
    def _window_scrolled(self, event: ContextTable.Scroll) -> None:
        table = self.table
        table.pending_cursor_row = event.cursor_row
        self.app.set_query(self.app.view.scrolled_to(event.offset, table.total))

    @on(ContextTable.Resized)
    def _table_resized(self) -> None:
        self.app.window_resized()

    @on(ContextTable.MarksChanged)
    def _marks_changed(self) -> None:
        self.table.border_subtitle = self.table.describe_window()


class TopApp(App[None]):
    """The dashboard. `clock` and `telemetry` are injectable so tests render deterministically."""

    CSS_PATH = "top.tcss"
    TITLE = "evicctl top"
    BINDINGS = _bindings("app")

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
        self._auto_disk = telemetry is None  # measure the manager's cache dir once it is known
        self.source = DashboardSource(
            self.db_path, telemetry=telemetry if telemetry is not None else TelemetryReader(),
            clock=clock)
        self.view = ViewQuery(sort=sort_key, descending=descending)
        self.paused = False
        self.frame: Frame | None = None
        self.last_outcome: Outcome | None = None
        self.notices: list[tuple[str, str, str]] = []  # (title, message, severity), all shown
        self._reading = False
        self._again = False

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
        if self._auto_disk and frame.snapshot is not None:
            reader = self.source.telemetry
            if isinstance(reader, TelemetryReader) and reader.disk_path is None:
                manager = frame.snapshot.manager
                reader.disk_path = cache_dir_from_config(manager.config if manager else None)
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

    def _rows(self, targets: tuple[str, ...]) -> list[Any]:
        by_id = self.main.table.rows_by_id
        return [by_id[t] for t in targets if t in by_id]

    def _tier_names(self) -> list[str]:
        snapshot = self.frame.snapshot if self.frame is not None else None
        return [t.name for t in snapshot.tiers] if snapshot is not None else []

    def _codec_names(self) -> list[str]:
        snapshot = self.frame.snapshot if self.frame is not None else None
        config = snapshot.manager.config if snapshot is not None and snapshot.manager else {}
        if config.get("codecs"):
            return [str(c) for c in config["codecs"]]
        from evicctl.config import DEFAULT_CODECS

        return list(DEFAULT_CODECS)

    @staticmethod
    def _subject(targets: tuple[str, ...]) -> str:
        return targets[0] if len(targets) == 1 else f"{len(targets)} contexts"

    def _ask_unpin(self, targets: tuple[str, ...]) -> None:
        self.submit(Request("unpin", targets))

    def _ask_pin(self, targets: tuple[str, ...]) -> None:
        rows = self._rows(targets)
        here = rows[0].tier if len(rows) == 1 and rows[0].tier not in (None, "dropped") else None
        tiers = Choice("tier", "tier", (("any tier", None), *((t, t) for t in self._tier_names())),
                       initial=here)
        codecs = Choice("codec", "codec", (("any codec", None), *((c, c) for c in self._codec_names())))

        def picked(choice: dict[str, str | None] | None) -> None:
            if choice is None:
                return
            args = {k: v for k, v in choice.items() if v is not None}
            if not args:
                self.notify("pin needs a tier or a codec (or both)", title="pin", severity="warning")
                return
            self.submit(Request("pin", targets, args))

        self.push_screen(PickerScreen(f"pin {self._subject(targets)}", (tiers, codecs)), picked)

    def _ask_evict(self, targets: tuple[str, ...]) -> None:
        rows = self._rows(targets)
        names = self._tier_names()
        placed = [names.index(r.tier) for r in rows if r.tier in names]
        lower = names[min(placed) + 1:] if placed else names
        options = (*((f"to {t}", t) for t in lower), ("drop (recompute on next use)", "drop"))

        def picked(choice: dict[str, str | None] | None) -> None:
            if choice is None or choice.get("to") is None:
                return
            to = choice["to"]
            question = f"evict {self._subject(targets)} to {to}?" if to != "drop" else \
                f"drop the KV cache of {self._subject(targets)}?"
            detail = ("Dropped contexts are recomputed (full prefill) on their next request."
                      if to == "drop" else "The placer may move them back when it re-plans.")
            self.push_screen(ConfirmScreen(question, detail), lambda yes: yes and self.submit(
                Request("evict", targets, {"to": to, "dry_run": False})))

        self.push_screen(PickerScreen(f"evict {self._subject(targets)}",
                                      (Choice("to", "to", options),)), picked)

    def _ask_recompress(self, targets: tuple[str, ...]) -> None:
        rows = self._rows(targets)
        current = {r.codec for r in rows}
        codecs = [c for c in self._codec_names() if not (len(rows) == 1 and c in current)]

        def picked(choice: dict[str, str | None] | None) -> None:
            if choice is None or choice.get("codec") is None:
                return
            codec = choice["codec"]
            self.push_screen(
                ConfirmScreen(f"recompress {self._subject(targets)} as {codec}?",
                              "Dropped tokens and bits cannot be restored from the stored copy."),
                lambda yes: yes and self.submit(
                    Request("recompress", targets, {"codec": codec, "dry_run": False, "force": False})))

        self.push_screen(PickerScreen(f"recompress {self._subject(targets)}",
                                      (Choice("codec", "codec", tuple((c, c) for c in codecs)),)),
                         picked)

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
    from evicctl.store import Store

    Store.open(db_path, readonly=True).close()
    TopApp(db_path, interval_s=interval_s, readonly=readonly, sort=sort).run()
