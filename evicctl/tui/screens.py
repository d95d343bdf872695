"""Screens over the main dashboard: context detail, pickers, confirmation, help."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, DataTable, Footer, Label, OptionList, Static
from textual.widgets.option_list import Option

from evicctl.tui import format as fmt
from evicctl.tui import keys, render

ANY = "__any__"  # option id of "no constraint" in a picker


# ---- pickers ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Choice:
    """One list in a picker: `name` is the result key, options are (prompt, value) pairs."""

    name: str
    title: str
    options: tuple[tuple[str, str | None], ...]
    initial: str | None = None  # value highlighted first


class PickerScreen(ModalScreen[dict[str, str | None] | None]):
    """One or two lists side by side; Enter picks the highlighted value of every list."""

    BINDINGS = [
        Binding("escape", "cancel", "cancel"),
        Binding("enter", "pick", "pick", priority=True),
    ]  # Tab / Shift+Tab move between the lists (Screen's own bindings)

    def __init__(self, title: str, choices: Sequence[Choice], note: str = "") -> None:
        super().__init__(classes="dialog-screen")
        self.title_text, self.choices, self.note = title, tuple(choices), note

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog picker"):
            yield Label(self.title_text, classes="dialog-title")
            with Horizontal(classes="picker-lists"):
                for choice in self.choices:
                    with Vertical(classes="picker-column"):
                        yield Label(choice.title, classes="picker-label")
                        options = [Option(prompt, id=value if value is not None else ANY)
                                   for prompt, value in choice.options]
                        yield OptionList(*options, id=f"pick-{choice.name}")
            yield Label(self.note or "↑↓ choose · Tab next list · Enter confirm · Esc cancel",
                        classes="dialog-note")

    def on_mount(self) -> None:
        for choice in self.choices:
            widget = self.query_one(f"#pick-{choice.name}", OptionList)
            values = [value for _, value in choice.options]
            widget.highlighted = values.index(choice.initial) if choice.initial in values else 0
        self.query_one(f"#pick-{self.choices[0].name}", OptionList).focus()

    def selection(self) -> dict[str, str | None]:
        picked: dict[str, str | None] = {}
        for choice in self.choices:
            widget = self.query_one(f"#pick-{choice.name}", OptionList)
            index = widget.highlighted
            value = None if index is None else widget.get_option_at_index(index).id
            picked[choice.name] = None if value in (None, ANY) else value
        return picked

    def action_pick(self) -> None:
        self.dismiss(self.selection())

    def action_cancel(self) -> None:
        self.dismiss(None)


class ConfirmScreen(ModalScreen[bool]):
    """A yes/no question for destructive actions; `n`, Esc and the default button cancel."""

    BINDINGS = [
        Binding("y", "answer(True)", "yes"),
        Binding("n,escape", "answer(False)", "no"),
    ]

    def __init__(self, question: str, detail: str = "") -> None:
        super().__init__(classes="dialog-screen")
        self.question, self.detail = question, detail

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog confirm"):
            yield Label(self.question, classes="dialog-title")
            if self.detail:
                yield Static(self.detail, classes="dialog-note")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Yes (y)", variant="error", id="yes")
                yield Button("No (n)", variant="primary", id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


# ---- help ---------------------------------------------------------------------------------
class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark", "close", "close")]

    def __init__(self, readonly: bool) -> None:
        super().__init__(classes="dialog-screen")
        self.readonly = readonly

    def compose(self) -> ComposeResult:
        table = Table(box=None, padding=(0, 2), show_header=False)
        table.add_column(style="bold cyan", no_wrap=True)
        table.add_column()
        for key in keys.ALL_KEYS:
            if self.readonly and key.mutating:
                continue
            table.add_row(key.shown, key.description)
        table.add_row("", "")
        table.add_row("detail", "Esc back · p u e r act on this context")
        table.add_row("mouse", "click a column header to sort by it; wheel scrolls")
        with Vertical(classes="dialog help"):
            yield Label("evicctl top: keys" + (" (read-only)" if self.readonly else ""),
                        classes="dialog-title")
            with VerticalScroll():
                yield Static(table)
            yield Label("Esc, q or ? closes", classes="dialog-note")

    def action_close(self) -> None:
        self.dismiss(None)


# ---- detail -------------------------------------------------------------------------------
class DetailReady(Message):
    def __init__(self, context_id: str, detail: Any, error: str | None) -> None:
        super().__init__()
        self.context_id, self.detail, self.error = context_id, detail, error


def option_why(option: Any, detail: Any, best: Any) -> Text:
    """Why an option is (not) the placement: the facts the placer weighed."""
    row = detail.row
    notes: list[tuple[str, str]] = []
    if option.chosen:
        notes.append(("current", "bold green"))
        if detail.reason:
            notes.append((f"placed by {detail.reason}", "green"))
    elif option is best:
        notes.append(("best utility", "bold"))
    if (row.pin_tier and option.tier not in (row.pin_tier,)) or (
            row.pin_codec and option.codec != row.pin_codec):
        notes.append(("excluded by pin", "yellow"))
    if row.quality_floor is not None and option.quality < row.quality_floor:
        notes.append(("below quality floor", "red"))
    if not option.fits:
        notes.append(("does not fit", "dim yellow"))
    text = Text()
    for i, (note, style) in enumerate(notes):
        text.append(("; " if i else "") + note, style=style)
    return text


class DetailScreen(Screen[None]):
    """One context: placement, pin and floor, every codec x tier option, recent events."""

    BINDINGS = [
        Binding("escape,q", "back", "back"),
        Binding("p", "act('pin')", "pin"),
        Binding("u", "act('unpin')", "unpin"),
        Binding("e", "act('evict')", "evict"),
        Binding("r", "act('recompress')", "recompress"),
    ]

    def __init__(self, context_id: str, *, readonly: bool) -> None:
        super().__init__()
        self.context_id = context_id
        self.readonly = readonly
        self.detail: Any = None

    def compose(self) -> ComposeResult:
        yield Static(id="detail-title")
        yield Static(Text("reading…", style="dim"), id="detail-summary")
        table: DataTable = DataTable(id="options", cursor_type="row", zebra_stripes=True)
        table.border_title = "options: codec x tier"
        yield table
        events = Static(id="detail-events")
        events.border_title = "recent events"
        yield events
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#options", DataTable)
        for title, width in (("", 1), ("codec", 17), ("tier", 7), ("stored", 9), ("quality", 13),
                             ("TTFT", 8), ("utility", 8), ("why", 36)):
            table.add_column(title, width=width, key=title or "chosen")
        self.query_one("#detail-title", Static).update(
            Text(f"context {self.context_id}", style="bold"))
        self.app.load_detail(self.context_id, self)  # type: ignore[attr-defined]
        self.set_interval(self.app.interval_s, self._reload)  # type: ignore[attr-defined]

    def _reload(self) -> None:
        if not self.app.paused:  # type: ignore[attr-defined]
            self.app.load_detail(self.context_id, self)  # type: ignore[attr-defined]

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        return not (action == "act" and self.readonly)  # False hides the binding too

    def on_key(self, event: Any) -> None:
        if self.readonly and event.key in keys.MUTATING_KEYS:
            event.stop()
            self.app.refuse_readonly()  # type: ignore[attr-defined]

    def action_back(self) -> None:
        self.dismiss(None)

    def action_act(self, verb: str) -> None:
        self.app.start_action(verb, (self.context_id,))  # type: ignore[attr-defined]

    def on_detail_ready(self, message: DetailReady) -> None:
        if message.context_id != self.context_id:
            return
        if message.error is not None:
            self.query_one("#detail-summary", Static).update(Text(message.error, style="bold red"))
            return
        self.detail = message.detail
        self.show(message.detail, self.app.clock())  # type: ignore[attr-defined]

    def show(self, detail: Any, now: float) -> None:
        row = detail.row
        title = Text(f"context {row.id}", style="bold")
        if row.label:
            title.append(f" · {row.label}")
        title.append(f" · tenant {row.tenant} · {row.tokens:,} tokens · raw {fmt.fmt_bytes(row.raw_bytes)}")
        self.query_one("#detail-title", Static).update(title)
        self.query_one("#detail-summary", Static).update(summary_text(detail, now))
        self._show_options(detail)
        self.query_one("#detail-events", Static).update(
            render.events_table(tuple(reversed(detail.events)), now, max_rows=12))

    def _show_options(self, detail: Any) -> None:
        table = self.query_one("#options", DataTable)
        source = getattr(detail, "cost_model", None)
        priced = {"manager": "TTFT: the manager's fitted cost model",
                  "default": "TTFT: default cost coefficients (none fitted yet)"}.get(
                      source, "TTFT: no cost model stored")
        table.border_subtitle = f"utility = freq × ({detail.alpha:g} × quality − TTFT) · {priced}"
        cursor = table.cursor_row
        table.clear()
        profiles = profile_notes(detail.profiles)
        best = next((o for o in detail.options if o.utility is not None), None)
        for option in detail.options:
            style = "bold" if option.chosen else ""
            quality = Text(f"{option.quality:.2f}", style=style)
            if option.codec in profiles:
                quality.append(profiles[option.codec], style="dim")
            table.add_row(
                Text("▶" if option.chosen else "", style="bold green"),
                Text(option.codec, style=style),
                Text(option.tier, style=style),
                Text("-" if option.tier == "dropped" else fmt.fmt_bytes(option.stored_bytes),
                     justify="right"),
                quality,
                Text(fmt.fmt_ttft(option.predicted_ttft_s), justify="right"),
                Text("-" if option.utility is None else f"{option.utility:.3g}", justify="right"),
                option_why(option, detail, best),
            )
        if table.row_count:
            table.move_cursor(row=min(cursor, table.row_count - 1), animate=False)


def profile_notes(profiles: Sequence[Any]) -> dict[str, str]:
    """Per codec, the profile's uncertainty and size: ` ±0.04 n8` (teacher-forced first)."""
    notes: dict[str, tuple[bool, str]] = {}
    for p in profiles:
        preferred = p.metric == "teacher-forced"
        if p.codec in notes and notes[p.codec][0] and not preferred:
            continue
        sd = f" ±{p.quality_sd:.2f}" if p.quality_sd is not None else ""
        notes[p.codec] = (preferred, f"{sd} n{p.n_queries}")
    return {codec: note for codec, (_, note) in notes.items()}


def summary_text(detail: Any, now: float) -> Text:
    row, placement = detail.row, detail.placement
    text = Text("placement ", style="bold")
    if placement is None:
        text.append("not placed yet", style="dim")
    elif placement.tier == "dropped":
        text.append("dropped", style="yellow")
        text.append(" (recomputed on the next request)", style="dim")
    else:
        text.append(f"{placement.tier}/{placement.codec}", style="bold cyan")
        text.append(f" {fmt.fmt_bytes(placement.stored_bytes)}")
        if row.compression_ratio:
            text.append(f" ({fmt.fmt_ratio(row.compression_ratio)} smaller than raw)")
        text.append(f" since {fmt.fmt_ago(placement.since, now)}")
    if detail.reason:
        text.append(f" · why: {detail.reason}")
    text.append("\npin ", style="bold")
    pin = render.pin_text(row)
    text.append(pin or "none", style="bold blue" if pin else "dim")
    text.append(" · quality floor ", style="bold")
    text.append(fmt.fmt_float(row.quality_floor) if row.quality_floor is not None else "none")
    text.append(" · ")
    text.append(f"freq {row.freq:.3f}/s · hits {row.hits} · misses {row.misses}"
                f" · last access {fmt.fmt_ago(row.last_access_at, now)}")
    text.append(f" · α {detail.alpha:g}", style="dim")
    return text
