"""Every key of `evicctl top`, in one table: the bindings, the `?` help and the README come from it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Key:
    keys: str  # Textual key names, comma-separated ("greater_than_sign,full_stop")
    shown: str  # how the help and the README write it
    action: str  # App action name
    label: str  # short, for the footer
    description: str
    mutating: bool = False  # writes a command: hidden and refused under --readonly
    footer: bool = True  # shown in the footer (the help lists every key regardless)
    scope: str = "main"  # main: the contexts screen only; app: every screen


# Table keys (arrows, Enter, space) reach the contexts table first; they are listed for help.
TABLE_KEYS: tuple[Key, ...] = (
    Key("up,down", "↑ ↓", "", "move", "move the selection (scrolls the window past the edges)", footer=False),
    Key("pageup,pagedown", "PgUp PgDn", "", "page", "page through the contexts", footer=False),
    Key("home,end", "Home End", "", "ends", "first / last context", footer=False),
    Key("enter", "Enter", "", "detail", "detail of the selected context: every codec x tier option", footer=False),
    Key("space", "Space", "", "mark", "mark / unmark the row for a bulk action", footer=False),
)

APP_KEYS: tuple[Key, ...] = (
    Key("p", "p", "pin", "pin", "pin the selected (or marked) contexts: tier / codec picker", mutating=True),
    Key("u", "u", "unpin", "unpin", "remove the pin of the selected (or marked) contexts", mutating=True),
    Key("e", "e", "evict", "evict", "evict to a lower tier or drop (asks to confirm)", mutating=True),
    Key("r", "r", "recompress", "recompress", "recompress with another codec: codec picker (asks to confirm)",
        mutating=True),
    Key("slash", "/", "filter", "filter", "filter: words in id/label/tenant; tier:gpu tenant:acme codec:int8 pinned"),
    Key("escape", "Esc", "clear", "clear", "clear the marks, then the filter", footer=False),
    Key("s", "s", "sort_next", "sort", "sort by the next column"),
    Key("S", "S", "sort_previous", "sort back", "sort by the previous column", footer=False),
    Key("i", "i", "sort_invert", "invert", "invert the sort order", footer=False),
    Key("a", "a", "mark_all", "mark all", "mark every row on screen", footer=False),
    Key("z", "z", "pause", "pause", "pause / resume updates", scope="app"),
    Key("t", "t", "theme", "theme", "toggle light / dark theme", footer=False, scope="app"),
    Key("question_mark", "?", "help", "help", "every key (this list)", scope="app"),
    Key("ctrl+p", "Ctrl+P", "command_palette", "palette", "command palette", footer=False, scope="app"),
    Key("q", "q", "quit", "quit", "quit", scope="app"),
)

ALL_KEYS: tuple[Key, ...] = TABLE_KEYS + APP_KEYS
MUTATING_ACTIONS = frozenset(k.action for k in APP_KEYS if k.mutating)
MUTATING_KEYS = frozenset(name for k in APP_KEYS if k.mutating for name in k.keys.split(","))


def key_table_markdown(readonly: bool = False) -> str:
    """The README's key table (Markdown)."""
    lines = ["| key | what it does |", "| --- | --- |"]
    for key in ALL_KEYS:
        if readonly and key.mutating:
            continue
        shown = " ".join(f"`{part}`" for part in key.shown.split(" "))
        lines.append(f"| {shown} | {key.description} |")
    return "\n".join(lines) + "\n"
