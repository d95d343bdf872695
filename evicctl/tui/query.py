"""What the contexts table asks the store for: sort column, order, filter and the visible window.

The dashboard never holds all contexts: each refresh reads only the rows on screen
(`limit`/`offset` in SQL through `read_snapshot`), so its cost does not grow with the store.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, replace

from evicctl.errors import UnknownNameError, UsageError


@dataclass(frozen=True)
class Column:
    key: str  # sort key passed to read_snapshot, and the DataTable column key
    title: str
    width: int  # cells, padding excluded
    priority: int  # narrow terminals drop the highest numbers first
    numeric: bool = False  # right-justified
    descending: bool = True  # natural order when first sorted by it (biggest first)


COLUMNS: tuple[Column, ...] = (
    Column("id", "id", 12, 0, descending=False),
    Column("label", "label", 12, 4, descending=False),
    Column("tenant", "tenant", 8, 5, descending=False),
    Column("tier", "tier", 5, 1, descending=False),
    Column("codec", "codec", 12, 1, descending=False),
    Column("size", "stored", 8, 2, numeric=True),
    Column("ratio", "×raw", 5, 4, numeric=True),
    Column("quality", "qual", 4, 2, numeric=True),
    Column("utility", "utility", 7, 1, numeric=True),
    Column("freq", "freq/s", 6, 5, numeric=True),
    Column("hits", "hits", 5, 3, numeric=True),
    Column("age", "last", 6, 3, numeric=True, descending=False),
)
# Spare width goes to these in turn, up to a cap each: they are what gets cut otherwise.
GROW: tuple[tuple[str, int], ...] = (("codec", 17), ("label", 28), ("id", 26), ("tenant", 12))
COLUMN_BY_KEY = {c.key: c for c in COLUMNS}
SORT_KEYS = tuple(c.key for c in COLUMNS)
MARK_COLUMN_WIDTH = 2  # "✓" marked, "⚑" pinned
CELL_PADDING = 2  # DataTable pads each cell by one on both sides


@dataclass(frozen=True)
class Filter:
    tier: str | None = None
    tenant: str | None = None
    search: str | None = None  # words (each a substring of id, label or tenant), codec:X, pinned

    @property
    def text(self) -> str:
        parts = [f"tier:{self.tier}"] if self.tier else []
        parts += [f"tenant:{self.tenant}"] if self.tenant else []
        parts += [self.search] if self.search else []
        return " ".join(parts)

    @property
    def active(self) -> bool:
        return bool(self.tier or self.tenant or self.search)


# tier: and tenant: are columns of read_snapshot; codec: and the word `pinned` travel in
# `search`, which read_snapshot parses the same way.
FILTER_KEYS = ("tier", "tenant", "codec")


def parse_filter(text: str) -> Filter:
    """`tier:gpu tenant:acme report` -> Filter(tier, tenant, search="report").

    Free words are one substring (joined by spaces). Ids may hold colons (`sha256:...`), so
    an unknown `key:` is a word, unless it is a near miss of a term (`teir:gpu`): that is an
    error naming the valid terms, so a typo never silently matches nothing.
    """
    terms: dict[str, str] = {}
    words: list[str] = []
    for token in text.split():
        key, sep, value = token.partition(":")
        if sep and key.lower() in ("tier", "tenant") and value:
            terms[key.lower()] = value
        elif sep and key.lower() == "codec" and value:
            words.append(f"codec:{value}")
        elif sep and difflib.get_close_matches(key.lower(), FILTER_KEYS, n=1, cutoff=0.75):
            raise UnknownNameError("filter term", f"{key}:", [f"{k}:" for k in FILTER_KEYS])
        else:
            words.append(token)
    return Filter(tier=terms.get("tier"), tenant=terms.get("tenant"),
                  search=" ".join(words) or None)


def store_sort_keys() -> tuple[str, ...]:
    """Every key read_snapshot sorts by: the table's columns and a few more (misses, tokens)."""
    from evicctl.snapshot.read import SORT_KEYS as STORE_KEYS

    return SORT_KEYS + tuple(k for k in STORE_KEYS if k not in COLUMN_BY_KEY)


def parse_sort(name: str) -> tuple[str, bool]:
    """`--sort utility` / `--sort -hits` / `--sort +age` -> (key, descending).

    Without a sign each column sorts its natural way (biggest first; names and the most
    recent access first).
    """
    text = name.strip().lower()
    sign = text[:1] if text[:1] in "+-" else ""
    key = text[1:] if sign else text
    key = {"last": "age", "stored": "size", "compression": "ratio"}.get(key, key)
    valid = store_sort_keys()
    if key not in valid:
        raise UnknownNameError("sort key", name, valid)
    if sign:
        return key, sign == "-"
    column = COLUMN_BY_KEY.get(key)
    return key, column.descending if column is not None else True


@dataclass(frozen=True)
class ViewQuery:
    """One refresh's question to the store."""

    sort: str = "utility"
    descending: bool = True
    filter: Filter = Filter()
    offset: int = 0  # index of the first row on screen in the sorted, filtered list
    limit: int = 20  # rows on screen

    def sorted_by(self, key: str, descending: bool | None = None) -> ViewQuery:
        if key not in COLUMN_BY_KEY:
            raise UnknownNameError("sort column", key, SORT_KEYS)
        order = COLUMN_BY_KEY[key].descending if descending is None else descending
        return replace(self, sort=key, descending=order, offset=0)

    def next_sort(self, step: int) -> ViewQuery:
        """The next column to the right (step 1) or left (-1); from a key with no column
        (--sort misses), the first column."""
        if self.sort not in COLUMN_BY_KEY:
            return self.sorted_by(SORT_KEYS[0])
        index = (SORT_KEYS.index(self.sort) + step) % len(SORT_KEYS)
        return self.sorted_by(SORT_KEYS[index])

    def inverted(self) -> ViewQuery:
        return replace(self, descending=not self.descending, offset=0)

    def filtered(self, flt: Filter) -> ViewQuery:
        return replace(self, filter=flt, offset=0)

    def scrolled_to(self, offset: int, total: int) -> ViewQuery:
        """Clamp so the window never starts past the last full page."""
        top = max(0, min(offset, max(0, total - self.limit)))
        return replace(self, offset=top)

    def with_limit(self, limit: int) -> ViewQuery:
        if limit < 1:
            raise UsageError(f"limit must be at least 1, got {limit}")
        return replace(self, limit=limit)


def visible_columns(width: int) -> tuple[Column, ...]:
    """The columns that fit `width` cells, in table order: the least important give way
    first, then what is left widens id, codec and label."""
    budget = width - MARK_COLUMN_WIDTH - CELL_PADDING
    chosen: dict[str, int] = {}
    for column in sorted(COLUMNS, key=lambda c: c.priority):
        cost = column.width + CELL_PADDING
        if cost <= budget:
            chosen[column.key] = column.width
            budget -= cost
    for key, cap in GROW:
        if key in chosen and budget > 0:
            extra = min(budget, cap - chosen[key])
            chosen[key] += extra
            budget -= extra
    return tuple(replace(c, width=chosen[c.key]) for c in COLUMNS if c.key in chosen)


def sort_title(key: str) -> str:
    column = COLUMN_BY_KEY.get(key)
    return column.title if column is not None else key
