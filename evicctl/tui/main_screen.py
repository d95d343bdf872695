"""The main screen of `evicctl top`: header, tiers + host, contexts, events, filter line."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Input

from evicctl.errors import UsageError
from evicctl.tui import keys
from evicctl.tui.actions import Outcome, Request
from evicctl.tui.query import COLUMN_BY_KEY, parse_filter
from evicctl.tui.screens import DetailScreen
from evicctl.tui.source import Frame
from evicctl.tui.widgets import ContextTable, EventsPanel, HeaderBar, TelemetryPanel, TiersPanel

if TYPE_CHECKING:
    from evicctl.tui.app import TopApp

NARROW_WIDTH = 140  # below: telemetry goes under the tiers, columns give way
SHORT_HEIGHT = 32  # below: a shorter events panel


def bindings(scope: str) -> list[Binding]:
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

    BINDINGS = bindings("main")
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
