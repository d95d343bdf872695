"""The dashboard's widgets. Each renders the latest frame it was given and nothing else."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.text import Text
from textual import events
from textual.binding import Binding
from textual.message import Message
from textual.widgets import DataTable, Static

from evicctl.telemetry import Telemetry
from evicctl.tui import render
from evicctl.tui.query import Column, sort_title, visible_columns


class HeaderBar(Static):
    """Manager state on the left; database, refresh state and clock on the right."""

    def show(self, manager: Any, now: float, *, db_path: str, paused: bool,
             error: str | None, read_ms: float | None) -> None:
        if error is not None:
            left = Text("✗ " + error, style="bold red")
        else:
            left = render.manager_text(manager, now)
        right = Text()
        if paused:
            right.append(" PAUSED ", style="bold black on yellow")
            right.append(" ")
        if read_ms is not None:
            right.append(f"read {read_ms:.0f} ms · ", style="dim")
        right.append(db_path, style="dim")
        width = self.content_size.width or 80
        # The manager state matters more than the path: the path gives way first.
        room = max(0, width - left.cell_len - 1)
        if right.cell_len > room:
            right = right[: max(0, room)] if room > 12 else Text("")
        line = left.copy()
        line.truncate(width, overflow="ellipsis")
        line.append(" " * max(1, width - line.cell_len - right.cell_len))
        line.append_text(right)
        self.update(line)


class TiersPanel(Static):
    """Per tier: used bar (pressure colours), capacity, read bandwidth, hit rate, history."""

    _tiers: Sequence[Any] = ()

    def show(self, tiers: Sequence[Any], misses_total: int | None = None) -> None:
        self._tiers = tiers
        self._render_tiers()

    def on_resize(self, _: events.Resize) -> None:
        self._render_tiers()

    def _render_tiers(self) -> None:
        width = self.content_size.width or 80
        # What the fixed columns leave goes to the bar first, then to the sparkline.
        name_width = max([4, *(len(t.name) for t in self._tiers)])
        spare = max(0, width - render.TIER_FIXED_CELLS - (name_width - 4))
        bar_width = max(4, min(16, spare // 2))
        spark_width = min(60, spare - bar_width - 2) if spare - bar_width - 2 >= 8 else 0
        if not spark_width:
            bar_width = max(4, min(16, spare))
        self.update(render.tiers_table(self._tiers, bar_width=bar_width, spark_width=spark_width))


class TelemetryPanel(Static):
    """GPU (NVML), host memory and swap, and the cache directory's disk."""

    _telemetry: Telemetry | None = None
    compact = False  # one line for host and disk, no bars: for short terminals

    def show(self, telemetry: Telemetry | None) -> None:
        self._telemetry = telemetry
        self._render_telemetry()

    def set_compact(self, compact: bool) -> None:
        if compact != self.compact:
            self.compact = compact
            self._render_telemetry()

    def on_resize(self, _: events.Resize) -> None:
        self._render_telemetry()

    def _render_telemetry(self) -> None:
        width = self.content_size.width or 80
        tel = self._telemetry
        if self.compact:
            lines = render.telemetry_compact(tel)
            for line in lines:
                line.no_wrap = True
                line.overflow = "ellipsis"
            self.update(Text("\n").join(lines))
        else:
            self.update(render.telemetry_table(tel, bar_width=8 if width >= 44 else 0,
                                               power_limit=width >= 52))
        self.border_subtitle = tel.disk.path if tel is not None and tel.disk and not self.compact else ""


class EventsPanel(Static):
    """The live tail of `events`: as many of the newest as fit, oldest at the top."""

    _events: Sequence[Any] = ()
    _now: float = 0.0

    def show(self, events_newest_first: Sequence[Any], now: float) -> None:
        self._events, self._now = events_newest_first, now
        self._render_events()

    def on_resize(self, _: events.Resize) -> None:
        self._render_events()

    def _render_events(self) -> None:
        height = self.content_size.height or 4
        header = height > 4  # short panels spend every line on events
        rows = max(1, height - (1 if header else 0))
        self.update(render.events_table(self._events, self._now, max_rows=rows, show_header=header))


class ContextTable(DataTable):
    """The contexts on screen: a window of `limit` rows at `offset` in the sorted list.

    The table holds only the window, so moving past its edges asks the app for another
    window (the `Scroll` message) instead of scrolling locally.
    """

    BINDINGS = [
        Binding("space", "toggle_mark", "mark", show=False),
        Binding("home,ctrl+home", "first", "first", show=False),
        Binding("end,ctrl+end", "last", "last", show=False),
    ]

    class Scroll(Message):
        """Show the window starting at `offset`, with the cursor on window row `cursor_row`."""

        def __init__(self, offset: int, cursor_row: int) -> None:
            super().__init__()
            self.offset, self.cursor_row = offset, cursor_row

    class MarksChanged(Message):
        pass

    class Resized(Message):
        pass

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)
        self.window_offset = 0
        self.total = 0
        self.rows_by_id: dict[str, Any] = {}
        self.order: list[str] = []
        self.marked: set[str] = set()
        self.columns_shown: tuple[Column, ...] = ()
        self.sort_state: tuple[str, bool] = ("utility", True)
        self.pending_cursor_row: int | None = None

    # ---- geometry -----------------------------------------------------------------------
    @property
    def window_rows(self) -> int:
        """How many rows fit on screen (the limit of the next read)."""
        height = self.content_size.height - (self.header_height if self.show_header else 0)
        return max(1, height)

    def on_resize(self, _: events.Resize) -> None:
        # The panels above and below grow once data arrives: the window follows.
        self.post_message(self.Resized())

    @property
    def selected_id(self) -> str | None:
        if not self.order:
            return None
        return self.order[min(self.cursor_row, len(self.order) - 1)]

    def targets(self) -> tuple[str, ...]:
        """The marked contexts, else the selected one."""
        if self.marked:
            return tuple(sorted(self.marked))
        return (self.selected_id,) if self.selected_id else ()

    # ---- showing a window -------------------------------------------------------------
    def show(self, rows: Sequence[Any], *, offset: int, total: int, now: float,
             sort: tuple[str, bool]) -> None:
        keep_id = self.selected_id
        keep_row = self.cursor_row
        columns = visible_columns(self.content_size.width or 80)
        if columns != self.columns_shown or sort != self.sort_state:
            self.sort_state = sort
            self._set_columns(columns)
        self.window_offset, self.total = offset, total
        self.order = [row.id for row in rows]
        self.rows_by_id = {row.id: row for row in rows}
        self.clear()
        for row in rows:
            self.add_row(*self._cells(row, now), key=row.id)
        self._restore_cursor(keep_id, keep_row)

    def _restore_cursor(self, keep_id: str | None, keep_row: int) -> None:
        """The same context stays selected across refreshes while it is on screen."""
        if not self.order:
            return
        if self.pending_cursor_row is not None:
            row = self.pending_cursor_row
            self.pending_cursor_row = None
        elif keep_id in self.rows_by_id:
            row = self.order.index(keep_id)
        else:
            row = keep_row
        self.move_cursor(row=max(0, min(row, len(self.order) - 1)), animate=False)

    def _set_columns(self, columns: tuple[Column, ...]) -> None:
        self.columns_shown = columns
        self.clear(columns=True)
        self.add_column("", width=2, key="mark")
        key, descending = self.sort_state
        for column in columns:
            self.add_column(render.column_title(column, key, descending), width=column.width,
                            key=column.key)

    def _cells(self, row: Any, now: float) -> list[Text]:
        cells = render.context_cells(row, now)
        out = [render.mark_text(row.id in self.marked, bool(row.pin_tier or row.pin_codec))]
        for column in self.columns_shown:
            cell = cells[column.key]
            if column.numeric:
                cell.justify = "right"
            cell.no_wrap = True
            cell.overflow = "ellipsis"
            out.append(cell)
        return out

    def refresh_marks(self) -> None:
        for index, context_id in enumerate(self.order):
            row = self.rows_by_id[context_id]
            self.update_cell_at((index, 0), render.mark_text(
                context_id in self.marked, bool(row.pin_tier or row.pin_codec)))

    # ---- keys ---------------------------------------------------------------------------
    def action_toggle_mark(self) -> None:
        context_id = self.selected_id
        if context_id is None:
            return
        self.marked.symmetric_difference_update({context_id})
        self.refresh_marks()
        self.post_message(self.MarksChanged())
        self.action_cursor_down()  # as in file managers: mark and move on

    def action_cursor_down(self) -> None:
        if self.order and self.cursor_row >= len(self.order) - 1:
            if self.window_offset + len(self.order) < self.total:
                self._scroll_to(self.window_offset + 1, len(self.order) - 1)
            return
        super().action_cursor_down()

    def action_cursor_up(self) -> None:
        if self.cursor_row <= 0:
            if self.window_offset > 0:
                self._scroll_to(self.window_offset - 1, 0)
            return
        super().action_cursor_up()

    def action_page_down(self) -> None:
        page = self.window_rows
        if self.window_offset + page >= self.total:
            self.move_cursor(row=max(0, len(self.order) - 1))
            return
        self._scroll_to(self.window_offset + page, self.cursor_row)

    def action_page_up(self) -> None:
        if self.window_offset == 0:
            self.move_cursor(row=0)
            return
        self._scroll_to(max(0, self.window_offset - self.window_rows), self.cursor_row)

    def action_first(self) -> None:
        self._scroll_to(0, 0) if self.window_offset else self.move_cursor(row=0)

    def action_last(self) -> None:
        last_offset = max(0, self.total - self.window_rows)
        if self.window_offset != last_offset:
            self._scroll_to(last_offset, self.window_rows - 1)
        else:
            self.move_cursor(row=max(0, len(self.order) - 1))

    def on_mouse_scroll_down(self, event: events.MouseScrollDown) -> None:
        event.prevent_default()  # the window is the whole table: no local scrolling
        event.stop()
        if self.window_offset + len(self.order) < self.total:
            self._scroll_to(self.window_offset + 3, self.cursor_row)

    def on_mouse_scroll_up(self, event: events.MouseScrollUp) -> None:
        event.prevent_default()
        event.stop()
        if self.window_offset > 0:
            self._scroll_to(max(0, self.window_offset - 3), self.cursor_row)

    def _scroll_to(self, offset: int, cursor_row: int) -> None:
        self.post_message(self.Scroll(offset, cursor_row))

    def describe_window(self) -> str:
        if not self.total:
            return "0 contexts"
        first, last = self.window_offset + 1, self.window_offset + len(self.order)
        key, descending = self.sort_state
        text = f"{first}-{last} of {self.total:,} · sort {sort_title(key)} {'↓' if descending else '↑'}"
        if self.marked:
            text += f" · {len(self.marked)} marked"
        return text
