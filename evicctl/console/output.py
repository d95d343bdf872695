"""Output for the CLI: rich tables on a terminal, plain aligned text when piped,
and `-o json|jsonl|csv` with stable field names for scripts."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TextIO


class OutputFormat(StrEnum):
    table = "table"
    json = "json"
    jsonl = "jsonl"
    csv = "csv"


def stdout_is_terminal() -> bool:
    return sys.stdout.isatty()


def console(stderr: bool = False):
    """A rich console on the current stdout; colour only on a terminal (rich decides, NO_COLOR honoured)."""
    from rich.console import Console

    return Console(file=sys.stderr if stderr else sys.stdout, highlight=False, soft_wrap=False)


@dataclass(frozen=True)
class Column:
    key: str
    header: str
    fmt: Callable[[Any], str] = str
    justify: str = "left"
    style: str | None = None
    priority: int = 9  # on a narrow terminal the lowest priorities are left out first


def _cell(col: Column, row: dict) -> str:
    value = row.get(col.key)
    return "-" if value is None and col.fmt is str else col.fmt(value)


def print_table(rows: Sequence[dict], columns: Sequence[Column], *, title: str | None = None,
                caption: str | None = None, row_style: Callable[[dict], str | None] | None = None) -> None:
    """A rich table on a terminal; aligned plain text (no colour, no box) when piped."""
    if stdout_is_terminal():
        from rich import box
        from rich.table import Table

        con = console()
        cells = [[_cell(c, r) for c in columns] for r in rows]
        keep = _fit_columns(columns, cells, con.width)
        table = Table(title=title, caption=caption, box=box.SIMPLE_HEAD, header_style="bold", title_justify="left")
        for i in keep:
            col = columns[i]
            table.add_column(col.header, justify=col.justify, style=col.style, no_wrap=True, overflow="ellipsis")
        for row, line in zip(rows, cells, strict=True):
            table.add_row(*(line[i] for i in keep), style=row_style(row) if row_style else None)
        con.print(table)
        return
    print_plain(rows, columns, title=title, caption=caption)


def _fit_columns(columns: Sequence[Column], cells: list[list[str]], width: int) -> list[int]:
    """Indexes of the columns to show: drop the least important until the rest fit."""
    # + 3: rich pads each cell by one space a side and separates columns by one more
    natural = [max([len(c.header)] + [len(line[i]) for line in cells]) + 3 for i, c in enumerate(columns)]
    keep = list(range(len(columns)))
    while sum(natural[i] for i in keep) > width and len(keep) > 1:
        worst = min(keep, key=lambda i: (columns[i].priority, -i))
        if columns[worst].priority >= 9:
            break  # only optional columns are dropped; rich truncates the rest
        keep.remove(worst)
    return keep


def print_plain(rows: Sequence[dict], columns: Sequence[Column], *, title: str | None = None,
                caption: str | None = None, file: TextIO | None = None) -> None:
    out = file or sys.stdout
    cells = [[_cell(c, r) for c in columns] for r in rows]
    widths = [max([len(c.header)] + [len(line[i]) for line in cells]) for i, c in enumerate(columns)]

    def line(values: list[str]) -> str:
        parts = [v.rjust(w) if c.justify == "right" else v.ljust(w) for v, w, c in zip(values, widths, columns, strict=True)]
        return "  ".join(parts).rstrip()

    if title:
        out.write(title + "\n")
    out.write(line([c.header for c in columns]) + "\n")
    for values in cells:
        out.write(line(values) + "\n")
    if caption:
        out.write(caption + "\n")


def print_records(records: Iterable[dict], fields: Sequence[str], fmt: OutputFormat) -> int:
    """json (one array), jsonl (one object a line) or csv (header + rows); returns the count."""
    out = sys.stdout
    n = 0
    if fmt is OutputFormat.csv:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(fields)
        for r in records:
            writer.writerow(["" if r.get(f) is None else r.get(f) for f in fields])
            n += 1
    elif fmt is OutputFormat.jsonl:
        for r in records:
            out.write(json.dumps({f: r.get(f) for f in fields}, default=str) + "\n")
            n += 1
    else:
        n = print_json_lines(json.dumps({f: r.get(f) for f in fields}, default=str) for r in records)
    return n


def print_json_lines(objects: Iterable[str], *, array: bool = True) -> int:
    """Write pre-rendered JSON objects as one array (or one per line); streams, never joins all."""
    out = sys.stdout
    n = 0
    if not array:
        for obj in objects:
            out.write(obj + "\n")
            n += 1
        return n
    out.write("[")
    for obj in objects:
        out.write(("\n" if n == 0 else ",\n") + obj)
        n += 1
    out.write("\n]\n" if n else "]\n")
    return n


def print_json_chunks(chunks: Iterable[list[str]], *, array: bool = True) -> int:
    """Pre-rendered JSON objects, a chunk at a time: one write per chunk, not per object."""
    out = sys.stdout
    n = 0
    sep = ",\n" if array else "\n"
    if array:
        out.write("[")
    for chunk in chunks:
        if not chunk:
            continue
        lead = "\n" if n == 0 else sep
        out.write(lead + sep.join(chunk) if array else sep.join(chunk) + "\n")
        n += len(chunk)
    if array:
        out.write("\n]\n" if n else "]\n")
    return n


def print_csv_rows(rows: Iterable[Sequence[Any]], fields: Sequence[str]) -> int:
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(fields)
    n = 0
    for r in rows:
        writer.writerow(["" if v is None else v for v in r])
        n += 1
    return n


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")
