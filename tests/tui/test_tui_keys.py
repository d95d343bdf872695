"""Pilot tests of every non-mutating key: sort, filter, scroll, pause, theme, help, detail."""

from __future__ import annotations

import contextlib

import pytest
from tui_helpers import loaded, make_app, notifications, screen_text, wait_for

from evicctl.errors import UnknownNameError, UsageError
from evicctl.store.database import Store
from evicctl.tui import keys
from evicctl.tui.app import MainScreen, TopApp, run_top
from evicctl.tui.screens import DetailScreen, HelpScreen


def _db_rows(path, sql, params=()):
    with contextlib.closing(Store.open(path, readonly=True)) as store:
        return [tuple(r) for r in store.query(sql, params)]


def _write(path, sql, params=()):
    with contextlib.closing(Store.open(path)) as store, store.transaction() as conn:
        conn.execute(sql, params)


def test_every_key_in_the_table_is_bound_to_an_action():
    app_actions = {b.action for b in TopApp.BINDINGS}
    main_actions = {b.action for b in MainScreen.BINDINGS}
    for key in keys.APP_KEYS:
        if key.action == "command_palette":
            continue  # Textual's own Ctrl+P
        owner = TopApp if key.scope == "app" else MainScreen
        assert key.action in (app_actions if key.scope == "app" else main_actions), key
        assert callable(getattr(owner, f"action_{key.action}", None)), key
    assert "space" in keys.key_table_markdown() or "Space" in keys.key_table_markdown()


@pytest.mark.asyncio
async def test_sort_keys_cycle_and_invert_and_order_the_rows(fixture_db):
    app = make_app(fixture_db.path, sort="hits")
    async with app.run_test(size=(120, 40)) as pilot:
        await loaded(pilot)
        table = app.main.table
        hits = [table.rows_by_id[i].hits for i in table.order]
        assert hits == sorted(hits, reverse=True)
        await pilot.press("i")  # fewest hits first
        await wait_for(pilot, lambda: not app.frame.query.descending)
        hits = [table.rows_by_id[i].hits for i in table.order]
        assert hits == sorted(hits)
        await pilot.press("s")  # the column after hits: last access
        await wait_for(pilot, lambda: app.frame.query.sort == "age")
        ages = [table.rows_by_id[i].last_access_at for i in table.order]
        assert ages == sorted(ages, reverse=True)  # most recent access first
        await pilot.press("S", "S")
        await wait_for(pilot, lambda: app.frame.query.sort == "freq")
        assert "sort freq/s" in str(table.border_subtitle)


@pytest.mark.asyncio
async def test_sort_flag_accepts_a_direction(fixture_db):
    app = make_app(fixture_db.path, sort="+utility")
    async with app.run_test(size=(120, 40)) as pilot:
        await loaded(pilot)
        table = app.main.table
        utilities = [table.rows_by_id[i].utility for i in table.order]
        assert utilities == sorted(utilities)


@pytest.mark.asyncio
async def test_filter_by_tier_and_substring_then_clear(fixture_db):
    (disk_total,) = _db_rows(fixture_db.path, "SELECT COUNT(*) FROM placements WHERE tier = 'disk'")[0]
    app = make_app(fixture_db.path)
    async with app.run_test(size=(120, 40)) as pilot:
        await loaded(pilot)
        table = app.main.table
        await pilot.press("slash")
        await pilot.press(*"tier:disk")
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.frame.query.filter.tier == "disk")
        assert {table.rows_by_id[i].tier for i in table.order} == {"disk"}
        assert table.total == disk_total
        assert "filter tier:disk" in str(table.border_title)
        await pilot.press("slash", "ctrl+u", *"00005", "enter")
        await wait_for(pilot, lambda: table.order == ["ctx-00005"])
        await pilot.press("slash", "ctrl+u", *"no-such-thing", "enter")
        await wait_for(pilot, lambda: app.frame.query.filter.search == "no-such-thing")
        assert table.total == 0 and table.order == [] and str(table.border_subtitle) == "0 contexts"
        await pilot.press("u")  # nothing selected: nothing to act on
        await wait_for(pilot, lambda: any("no context selected" in m for _, m, _ in notifications(app)))
        await pilot.press("escape")  # marks first (none), then the filter
        await wait_for(pilot, lambda: not app.frame.query.filter.active)
        assert table.total == len(fixture_db.context_ids)


@pytest.mark.asyncio
async def test_filter_typo_is_reported_and_the_line_stays_open(fixture_db):
    app = make_app(fixture_db.path)
    async with app.run_test(size=(120, 40)) as pilot:
        await loaded(pilot)
        await pilot.press("slash", *"teir:gpu", "enter")
        await wait_for(pilot, lambda: any("filter term" in m for _, m, _ in notifications(app)))
        assert app.main.query_one("#filter").display
        assert any("valid: tier:, tenant:, codec:" in m for _, m, _ in notifications(app))


@pytest.mark.asyncio
async def test_scrolling_past_the_window_reads_the_next_rows(fixture_db):
    app = make_app(fixture_db.path)
    async with app.run_test(size=(120, 40)) as pilot:
        await loaded(pilot)
        table = app.main.table
        window = len(table.order)
        assert app.view.limit == window == table.window_rows  # only the visible rows are read
        first_ids = list(table.order)
        await pilot.press(*["down"] * (window - 1))
        assert table.cursor_row == window - 1 and app.view.offset == 0
        await pilot.press("down")
        await wait_for(pilot, lambda: table.window_offset == 1)
        assert table.order[:-1] == first_ids[1:]
        assert table.selected_id == table.order[-1]
        await pilot.press("pagedown")
        await wait_for(pilot, lambda: table.window_offset == 1 + window)
        await pilot.press("end")
        await wait_for(pilot, lambda: table.window_offset == table.total - window)
        assert table.selected_id == table.order[-1]
        assert f"of {table.total}" in str(table.border_subtitle)
        await pilot.press("home")
        await wait_for(pilot, lambda: table.window_offset == 0 and table.cursor_row == 0)


@pytest.mark.asyncio
async def test_selection_follows_its_context_when_the_order_changes(fixture_db):
    app = make_app(fixture_db.path, interval_s=0.25)
    async with app.run_test(size=(120, 40)) as pilot:
        await loaded(pilot)
        table = app.main.table
        await pilot.press("down", "down", "down")
        chosen = table.selected_id
        assert table.order.index(chosen) == 3
        _write(fixture_db.path, "UPDATE contexts SET utility = 99 WHERE id = ?", (chosen,))
        await wait_for(pilot, lambda: table.order[0] == chosen)
        assert table.selected_id == chosen and table.cursor_row == 0


@pytest.mark.asyncio
async def test_pause_stops_updates_until_resumed(fixture_db):
    app = make_app(fixture_db.path, interval_s=0.25)
    async with app.run_test(size=(120, 40)) as pilot:
        await loaded(pilot)
        table = app.main.table
        top = table.order[0]
        await pilot.press("z")
        assert app.paused
        assert "PAUSED" in screen_text(app).splitlines()[0]
        _write(fixture_db.path, "UPDATE contexts SET label = 'renamed-while-paused' WHERE id = ?", (top,))
        await pilot.pause(1.0)  # four intervals
        assert table.rows_by_id[top].label != "renamed-while-paused"
        await pilot.press("z")
        await wait_for(pilot, lambda: table.rows_by_id[top].label == "renamed-while-paused")
        await pilot.pause(0.1)
        assert "PAUSED" not in screen_text(app).splitlines()[0]


@pytest.mark.asyncio
async def test_theme_toggles_between_dark_and_light(fixture_db):
    app = make_app(fixture_db.path)
    async with app.run_test(size=(80, 24)) as pilot:
        await loaded(pilot)
        assert app.theme == "textual-dark"
        await pilot.press("t")
        assert app.theme == "textual-light"
        await pilot.press("t")
        assert app.theme == "textual-dark"


@pytest.mark.asyncio
async def test_help_lists_every_key(fixture_db):
    app = make_app(fixture_db.path)
    async with app.run_test(size=(120, 40)) as pilot:
        await loaded(pilot)
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        text = screen_text(app)
        for key in keys.ALL_KEYS:
            assert key.description in text, key.description
        await pilot.press("escape")
        assert isinstance(app.screen, MainScreen)


@pytest.mark.asyncio
async def test_command_palette_opens(fixture_db):
    from textual.command import CommandPalette

    app = make_app(fixture_db.path)
    async with app.run_test(size=(120, 40)) as pilot:
        await loaded(pilot)
        await pilot.press("ctrl+p")
        await wait_for(pilot, lambda: isinstance(app.screen, CommandPalette))
        titles = [c.title for c in app.get_system_commands(app.screen)]
        assert "Sort by hits" in titles and "Pin selected" in titles


@pytest.mark.asyncio
async def test_enter_opens_the_detail_and_escape_returns(fixture_db):
    app = make_app(fixture_db.path)
    async with app.run_test(size=(120, 40)) as pilot:
        await loaded(pilot)
        target = app.main.table.selected_id
        await pilot.press("enter")
        assert isinstance(app.screen, DetailScreen) and app.screen.context_id == target
        screen = app.screen
        await wait_for(pilot, lambda: screen.detail is not None, timeout_s=60)
        options = screen.query_one("#options")
        assert options.row_count == len(screen.detail.options) > 1
        chosen = [o for o in screen.detail.options if o.chosen]
        assert len(chosen) == 1
        await pilot.pause(0.2)
        text = screen_text(app)
        assert "recent events" in text and "admit" in text
        assert f"context {target}" in text and "▶" in text
        await pilot.press("escape")
        assert isinstance(app.screen, MainScreen)


@pytest.mark.asyncio
async def test_missing_database_is_shown_not_raised(tmp_path):
    app = make_app(tmp_path / "nowhere.db")
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: app.frame is not None)
        assert app.frame.error is not None and "no database at" in app.frame.error
        assert "no database at" in screen_text(app).splitlines()[0]


@pytest.mark.asyncio
async def test_fits_80x24(fixture_db):
    app = make_app(fixture_db.path)
    async with app.run_test(size=(80, 24)) as pilot:
        await loaded(pilot)
        main = app.main
        table = main.table
        assert len(table.order) >= 5
        assert table.virtual_size.width <= table.content_size.width  # no sideways scrolling
        for selector in ("#header", "#tiers", "#telemetry", "#contexts", "#events"):
            region = main.query_one(selector).region
            assert region.height > 0 and region.right <= 80 and region.bottom <= 24, selector


def test_live_mode_refuses_without_a_terminal(fixture_db, monkeypatch):
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    with pytest.raises(UsageError, match="needs a terminal.*--once"):
        run_top(fixture_db.path)


def test_bad_flags_are_usage_errors(fixture_db):
    with pytest.raises(UsageError, match="at least 0.25"):
        run_top(fixture_db.path, interval_s=0.1)
    with pytest.raises(UnknownNameError, match="valid: id, label, tenant"):
        run_top(fixture_db.path, sort="bogus")
    with pytest.raises(UsageError):
        TopApp(fixture_db.path, interval_s=0.2)


@pytest.mark.asyncio
async def test_clicking_a_header_sorts_by_it(fixture_db):
    app = make_app(fixture_db.path)
    async with app.run_test(size=(120, 40)) as pilot:
        await loaded(pilot)
        table = app.main.table
        x = 1  # the border
        for key, column in table.columns.items():
            if key.value == "hits":
                break
            x += column.get_render_width(table)
        await pilot.click("#contexts", offset=(x + 2, 1))
        await wait_for(pilot, lambda: app.frame.query.sort == "hits")
        await pilot.click("#contexts", offset=(x + 2, 1))  # again: the other way
        await wait_for(pilot, lambda: app.frame.query.sort == "hits" and not app.frame.query.descending)


@pytest.mark.asyncio
async def test_new_events_stream_into_the_tail(fixture_db):
    app = make_app(fixture_db.path, interval_s=0.25)
    async with app.run_test(size=(120, 40)) as pilot:
        await loaded(pilot)
        _write(fixture_db.path,
               "INSERT INTO events (ts, context_id, kind, from_tier, to_tier, from_codec, to_codec,"
               " reason, actor) VALUES (?, 'ctx-00042', 'move', 'cpu', 'disk', 'int8', 'int4',"
               " 'capacity', 'policy')", (fixture_db.now - 2,))
        await wait_for(pilot, lambda: app.frame.snapshot.events[0].context_id == "ctx-00042")
        await pilot.pause(0.1)
        last_event_line = [line for line in screen_text(app).splitlines() if "ctx-00042" in line][-1]
        assert "cpu/int8 → disk/int4" in last_event_line and "capacity" in last_event_line
