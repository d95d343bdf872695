"""Pure parts of the dashboard: filter and sort parsing, the window, formatting, outcomes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from evicctl.errors import UnknownNameError, UsageError
from evicctl.tui import format as fmt
from evicctl.tui.actions import Request, perform, summarise
from evicctl.tui.keys import ALL_KEYS, MUTATING_ACTIONS, key_table_markdown
from evicctl.tui.query import (
    CELL_PADDING,
    COLUMNS,
    MARK_COLUMN_WIDTH,
    Filter,
    ViewQuery,
    parse_filter,
    parse_sort,
    visible_columns,
)


def test_filter_terms_and_words():
    assert parse_filter("tier:gpu tenant:acme report q3") == Filter("gpu", "acme", "report q3")
    assert parse_filter("codec:int8 pinned") == Filter(search="codec:int8 pinned")
    assert parse_filter("sha256:abc") == Filter(search="sha256:abc")  # ids may hold colons
    assert parse_filter("  ") == Filter()
    assert parse_filter("tier:disk x").text == "tier:disk x"


@pytest.mark.parametrize("typo", ["teir:gpu", "tennant:acme", "codecs:int8"])
def test_filter_typo_names_the_valid_terms(typo):
    with pytest.raises(UnknownNameError, match="valid: tier:, tenant:, codec:"):
        parse_filter(typo)


def test_sort_parsing():
    assert parse_sort("utility") == ("utility", True)
    assert parse_sort("id") == ("id", False)
    assert parse_sort("last") == ("age", False)  # most recent access first
    assert parse_sort("+hits") == ("hits", False)
    assert parse_sort("-age") == ("age", True)
    assert parse_sort("misses") == ("misses", True)  # a store key without a column
    with pytest.raises(UnknownNameError):
        parse_sort("colour")


def test_sort_cycle_visits_every_column_and_resets_the_window():
    view = ViewQuery(offset=40)
    seen = []
    for _ in COLUMNS:
        view = view.next_sort(+1)
        seen.append(view.sort)
        assert view.offset == 0
    assert sorted(seen) == sorted(c.key for c in COLUMNS)
    assert ViewQuery(sort="misses").next_sort(1).sort == COLUMNS[0].key
    assert ViewQuery().inverted().descending is False


@given(offset=st.integers(-50, 500), total=st.integers(0, 300), limit=st.integers(1, 60))
def test_window_never_starts_past_the_last_page(offset, total, limit):
    view = ViewQuery(limit=limit).scrolled_to(offset, total)
    assert 0 <= view.offset <= max(0, total - limit)


def test_limit_must_be_positive():
    with pytest.raises(UsageError):
        ViewQuery().with_limit(0)


@pytest.mark.parametrize("width", [40, 78, 100, 118, 160, 240])
def test_columns_fit_the_width_and_keep_the_important_ones(width):
    columns = visible_columns(width)
    used = MARK_COLUMN_WIDTH + CELL_PADDING + sum(c.width + CELL_PADDING for c in columns)
    assert used <= width
    keys = [c.key for c in columns]
    assert keys[0] == "id" and "utility" in keys or width < 60
    if width >= 118:
        assert len(columns) == len(COLUMNS)


def test_byte_and_bandwidth_units():
    assert fmt.fmt_bytes(None) == "N/A"
    assert fmt.fmt_bytes(512) == "512 B"
    assert fmt.fmt_bytes(1536) == "1.50 KiB"
    assert fmt.fmt_bytes(1000 * 2**20) == "1000 MiB"
    assert fmt.fmt_bytes(141 * 2**30) == "141 GiB"
    assert fmt.fmt_used_total(45 * 2**30, 141 * 2**30) == "45.0/141 GiB"
    assert fmt.fmt_used_total(None, 10) == "N/A/10 B"
    assert fmt.fmt_bps(55e9) == "55.0 GB/s" and fmt.fmt_bps(0) == "-" and fmt.fmt_bps(None) == "N/A"


def test_durations():
    assert [fmt.fmt_duration(s) for s in (0.42, 42, 252, 7500, 273600)] == [
        "0.4s", "42s", "4m12s", "2h05m", "3d04h"]
    assert fmt.fmt_ago(100.0, 160.0) == "1m00s ago" and fmt.fmt_ago(None, 1.0) == "N/A"


def test_bar_and_sparkline_widths_and_colours():
    for fraction in (0.0, 0.33, 0.8, 0.95, 1.0, 1.7, None):
        assert fmt.bar(fraction, 10).cell_len == 10
    assert fmt.pressure_style(0.5) == "green" and fmt.pressure_style(0.8) == "yellow"
    assert fmt.pressure_style(0.95) == "bold red"
    spark = fmt.sparkline([0.0, 0.5, 1.0], 6)
    assert spark.cell_len == 6 and str(spark).endswith("█")
    assert fmt.sparkline([0.2] * 100, 8).cell_len == 8


def test_moves_read_naturally():
    assert fmt.fmt_move("cpu", "none", "disk", "int8") == "cpu/none → disk/int8"
    assert fmt.fmt_move(None, None, "gpu", "int4") == "gpu/int4"
    assert fmt.fmt_move("cpu", "int8", "dropped", None) == "cpu/int8 → dropped"


def test_key_table_lists_every_key_and_readonly_drops_the_actions():
    table = key_table_markdown()
    for key in ALL_KEYS:
        assert key.description in table
    readonly = key_table_markdown(readonly=True)
    assert "pin the selected" not in readonly and "filter" in readonly
    assert {"pin", "unpin", "evict", "recompress"} == MUTATING_ACTIONS


def test_one_outcome_for_many_commands():
    request = Request("evict", ("a", "b", "c"), {"to": "disk", "dry_run": False})
    outcome = summarise(request, [7, 8, 9], [("done", "moved"), ("refused", "pinned to cpu"),
                                             ("done", "moved")])
    assert outcome.severity == "warning" and outcome.title == "refused"
    assert "2 done, 1 refused" in outcome.message and "b: pinned to cpu" in outcome.message
    assert "#7, #8, #9" in outcome.message
    single = summarise(Request("unpin", ("a",)), [3], [("done", "")])
    assert single.severity == "information" and single.message == "unpin a: done (command #3)"
    timeout = summarise(Request("unpin", ("a",)), [4], [("timeout", "no answer")])
    assert timeout.severity == "error"


def test_perform_reports_a_broken_database_instead_of_raising(tmp_path):
    outcome = perform(tmp_path / "missing.db", Request("unpin", ("a",)), timeout_s=0.1)
    assert outcome.severity == "error" and "no database at" in outcome.message
