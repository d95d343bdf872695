"""Pilot tests of the operator actions: the command row written and the notification shown."""

from __future__ import annotations

import pytest
from tui_helpers import command_rows, loaded, make_app, make_fixture_db, notifications, wait_for

from evicctl.tui.screens import ConfirmScreen, DetailScreen, PickerScreen


async def _outcome(pilot, count: int = 1):
    app = pilot.app
    await wait_for(pilot, lambda: app.last_outcome is not None
                   and len(app.last_outcome.command_ids) >= count)
    return app.last_outcome


@pytest.mark.asyncio
async def test_pin_writes_a_pin_command_and_shows_done(fixture_db, manager):
    app = make_app(fixture_db.path)
    async with app.run_test(size=(120, 40)) as pilot:
        await loaded(pilot)
        target = app.main.table.selected_id
        await pilot.press("p")
        assert isinstance(app.screen, PickerScreen)
        # the tier list starts on the context's own tier (gpu); Tab to codecs: any, none, int8
        await pilot.press("tab", "down", "down", "enter")
        outcome = await _outcome(pilot)
    rows = command_rows(fixture_db.path)
    assert [(r["verb"], r["context_id"], r["status"]) for r in rows] == [("pin", target, "done")]
    assert rows[0]["args"] == {"tier": "gpu", "codec": "int8"}
    assert outcome.severity == "information"
    assert any(title == "done" and f"pin applied to {target}" in message
               for title, message, _ in notifications(app))
    assert manager.handled[0].args == {"tier": "gpu", "codec": "int8"}


@pytest.mark.asyncio
async def test_pin_with_no_tier_and_no_codec_sends_nothing(fixture_db, manager):
    app = make_app(fixture_db.path)
    async with app.run_test(size=(120, 40)) as pilot:
        await loaded(pilot)
        await pilot.press("p", "up", "enter")  # tier "any", codec "any"
        await wait_for(pilot, lambda: any("needs a tier or a codec" in m
                                          for _, m, _ in notifications(app)))
    assert command_rows(fixture_db.path) == []


@pytest.mark.asyncio
async def test_unpin_writes_an_unpin_command(fixture_db, manager):
    app = make_app(fixture_db.path)
    async with app.run_test(size=(120, 40)) as pilot:
        await loaded(pilot)
        target = app.main.table.selected_id
        await pilot.press("u")
        await _outcome(pilot)
    rows = command_rows(fixture_db.path)
    assert [(r["verb"], r["context_id"], r["args"], r["status"]) for r in rows] == [
        ("unpin", target, {}, "done")]
    assert any("unpin applied" in m for _, m, _ in notifications(app))


@pytest.mark.asyncio
async def test_evict_asks_for_confirmation_then_writes_the_command(fixture_db, manager):
    app = make_app(fixture_db.path)
    async with app.run_test(size=(120, 40)) as pilot:
        await loaded(pilot)
        target = app.main.table.selected_id  # on gpu: the picker offers cpu, disk, drop
        await pilot.press("e", "down", "enter")  # "to disk"
        assert isinstance(app.screen, ConfirmScreen)
        assert "to disk" in app.screen.question
        await pilot.press("y")
        await _outcome(pilot)
    rows = command_rows(fixture_db.path)
    assert [(r["verb"], r["context_id"], r["args"]) for r in rows] == [
        ("evict", target, {"to": "disk", "dry_run": False})]


@pytest.mark.asyncio
async def test_evict_declined_writes_nothing(fixture_db, manager):
    app = make_app(fixture_db.path)
    async with app.run_test(size=(120, 40)) as pilot:
        await loaded(pilot)
        await pilot.press("e", "end", "enter")  # "drop"
        assert isinstance(app.screen, ConfirmScreen)
        assert app.screen.question.startswith("drop the KV cache")
        await pilot.press("n")
        await pilot.pause(0.3)
        assert not isinstance(app.screen, ConfirmScreen)
    assert command_rows(fixture_db.path) == []


@pytest.mark.asyncio
async def test_recompress_picks_a_codec_and_confirms(fixture_db, manager):
    app = make_app(fixture_db.path)
    async with app.run_test(size=(120, 40)) as pilot:
        await loaded(pilot)
        target = app.main.table.selected_id
        current = app.main.table.rows_by_id[target].codec
        await pilot.press("r")
        picker = app.screen
        assert isinstance(picker, PickerScreen)
        offered = [value for _, value in picker.choices[0].options]
        assert current not in offered and offered  # recompressing to the same codec is no choice
        await pilot.press("enter", "y")
        await _outcome(pilot)
    rows = command_rows(fixture_db.path)
    assert [(r["verb"], r["context_id"], r["args"]) for r in rows] == [
        ("recompress", target, {"codec": offered[0], "dry_run": False, "force": False})]


@pytest.mark.asyncio
async def test_refusal_is_shown_with_its_reason(fixture_db, manager):
    manager.refuse["unpin"] = "context is not pinned"
    app = make_app(fixture_db.path)
    async with app.run_test(size=(120, 40)) as pilot:
        await loaded(pilot)
        await pilot.press("u")
        outcome = await _outcome(pilot)
    assert outcome.severity == "warning" and outcome.title == "refused"
    assert [r["status"] for r in command_rows(fixture_db.path)] == ["refused"]
    assert any(title == "refused" and "context is not pinned" in message and severity == "warning"
               for title, message, severity in notifications(app))


@pytest.mark.asyncio
async def test_without_a_manager_nothing_is_sent(tmp_path):
    info = make_fixture_db(tmp_path / "evicctl.db", 20, manager="stale")
    app = make_app(info.path)
    async with app.run_test(size=(120, 40)) as pilot:
        await loaded(pilot)
        await pilot.press("u")
        await wait_for(pilot, lambda: app.last_outcome is not None)
    outcome = app.last_outcome
    assert command_rows(info.path) == []
    assert outcome.title == "no manager" and outcome.severity == "error"
    assert "no manager running" in outcome.message and "nothing was sent" in outcome.message


@pytest.mark.asyncio
async def test_marked_rows_get_one_command_each_and_marks_clear_when_done(fixture_db, manager):
    app = make_app(fixture_db.path)
    async with app.run_test(size=(120, 40)) as pilot:
        await loaded(pilot)
        table = app.main.table
        first, second = table.order[0], table.order[1]
        await pilot.press("space", "space")  # space marks and moves down
        assert table.marked == {first, second}
        assert "2 marked" in str(table.border_subtitle)
        await pilot.press("u")
        outcome = await _outcome(pilot, count=2)
        await wait_for(pilot, lambda: not table.marked)
    rows = command_rows(fixture_db.path)
    assert sorted((r["verb"], r["context_id"]) for r in rows) == [("unpin", first), ("unpin", second)]
    assert "2 contexts" in outcome.message and "2 done" in outcome.message


@pytest.mark.asyncio
async def test_readonly_hides_and_refuses_actions(fixture_db, manager):
    app = make_app(fixture_db.path, readonly=True)
    async with app.run_test(size=(120, 40)) as pilot:
        await loaded(pilot)
        screen = app.screen
        assert [screen.check_action(a, ()) for a in ("pin", "unpin", "evict", "recompress")] == [False] * 4
        assert screen.check_action("filter", ()) is True  # reading stays available
        for key in ("p", "u", "e", "r"):
            await pilot.press(key)
        await pilot.pause(0.2)
        assert not isinstance(app.screen, PickerScreen | ConfirmScreen)
        refusals = [m for t, m, s in notifications(app) if t == "refused" and s == "warning"]
        assert len(refusals) == 4 and "read-only" in refusals[0]
    assert command_rows(fixture_db.path) == []


@pytest.mark.asyncio
async def test_actions_from_the_detail_view_target_its_context(fixture_db, manager):
    app = make_app(fixture_db.path)
    async with app.run_test(size=(120, 40)) as pilot:
        await loaded(pilot)
        await pilot.press("down", "down", "enter")
        screen = app.screen
        assert isinstance(screen, DetailScreen)
        target = screen.context_id
        await pilot.press("u")
        await _outcome(pilot)
        assert app.screen is screen  # the detail stays open and reloads
    rows = command_rows(fixture_db.path)
    assert [(r["verb"], r["context_id"]) for r in rows] == [("unpin", target)]


@pytest.mark.asyncio
async def test_readonly_detail_refuses_actions(fixture_db):
    app = make_app(fixture_db.path, readonly=True)
    async with app.run_test(size=(120, 40)) as pilot:
        await loaded(pilot)
        await pilot.press("enter")
        assert isinstance(app.screen, DetailScreen)
        await pilot.press("e")
        await wait_for(pilot, lambda: any(t == "refused" for t, _, _ in notifications(app)))
        assert isinstance(app.screen, DetailScreen)
    assert command_rows(fixture_db.path) == []
