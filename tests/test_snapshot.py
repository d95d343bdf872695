"""The read model: consistent snapshots, SQL-side sort/filter/paging, per-option utilities."""

from __future__ import annotations

import json

import pytest

from evicctl.errors import NoSuchContextError, UnknownNameError
from evicctl.snapshot.detail import read_context
from evicctl.snapshot.read import (
    CONTEXT_FIELDS,
    iter_contexts,
    read_contexts,
    read_events,
    read_snapshot,
)
from evicctl.store.database import Store


@pytest.fixture
def store(fixture_db):
    with Store.open(fixture_db.path, readonly=True) as s:
        yield s


def test_snapshot_parts(store, fixture_db):
    snap = read_snapshot(store, limit=10, now=fixture_db.now)
    assert snap.taken_at == fixture_db.now
    assert snap.manager is not None and snap.manager.alive and snap.manager.pid == 4242
    assert snap.manager.description.alpha == 2.0
    assert [t.name for t in snap.tiers] == ["gpu", "cpu", "disk"]
    assert all(t.used_bytes <= t.capacity_bytes for t in snap.tiers)
    assert len(snap.contexts) == 10 and snap.contexts_total == 50
    assert [e.id for e in snap.events] == sorted((e.id for e in snap.events), reverse=True)
    assert snap.misses_total == sum(c.misses for c in read_contexts(store)[0])
    later = read_snapshot(store, now=fixture_db.now + 3600)
    assert not later.manager.alive  # the heartbeat is an hour old then


def test_paging_is_stable_and_disjoint(store):
    pages = [read_contexts(store, sort="tier", limit=7, offset=k * 7)[0] for k in range(8)]
    ids = [c.id for page in pages for c in page]
    assert len(ids) == len(set(ids)) == 50


@pytest.mark.parametrize("sort", ["utility", "size", "hits", "quality", "age", "freq", "ratio"])
@pytest.mark.parametrize("descending", [True, False])
def test_sorts_put_nulls_last_in_both_directions(store, sort, descending):
    rows, _ = read_contexts(store, sort=sort, descending=descending)
    key = {"size": "stored_bytes", "ratio": "compression_ratio", "age": "last_access_at"}.get(sort, sort)
    values = [getattr(r, key) for r in rows]
    present = [v for v in values if v is not None]
    assert values[: len(present)] == present  # every None after every value
    expect_desc = descending != (sort == "age")  # age is the inverse of last access
    assert present == sorted(present, reverse=expect_desc)


def test_unknown_sort_key_lists_the_valid_ones(store):
    with pytest.raises(UnknownNameError, match="utility"):
        read_contexts(store, sort="bogus")


def test_filters_and_search_terms(store, fixture_db):
    disk, n_disk = read_contexts(store, tier="disk")
    assert n_disk == len(disk) > 0 and {c.tier for c in disk} == {"disk"}
    rows, total = read_contexts(store, search="tier:cpu tenant:acme", limit=2)
    assert total >= len(rows) and all(c.tier == "cpu" and c.tenant == "acme" for c in rows)
    pinned, _ = read_contexts(store, search="pinned")
    assert {c.id for c in pinned} == set(fixture_db.pinned)
    by_codec, _ = read_contexts(store, search="codec:int8")
    assert by_codec and {c.codec for c in by_codec} == {"int8"}
    text, _ = read_contexts(store, search="HOTPOT normans")
    assert text and all("hotpot:normans" in c.label.lower() for c in text)


def test_streamed_rows_match_the_page_api(store):
    page, _ = read_contexts(store, sort="hits", limit=20)
    tuples = list(iter_contexts(store, sort="hits", limit=20, chunk=3))
    objects = [json.loads(s) for s in iter_contexts(store, sort="hits", limit=20, as_json=True, chunk=7)]
    assert [t[0] for t in tuples] == [o["id"] for o in objects] == [c.id for c in page]
    assert list(objects[0]) == list(CONTEXT_FIELDS)
    first = page[0]
    assert objects[0]["quality"] == pytest.approx(first.quality)
    assert tuples[0] == tuple(getattr(first, f) for f in CONTEXT_FIELDS)


def test_quality_of_none_is_exact_and_of_dropped_is_unknown(store, fixture_db):
    rows, _ = read_contexts(store)
    assert all(c.quality == 1.0 for c in rows if c.codec == "none" and c.tier != "dropped")
    assert all(c.quality is None for c in rows if c.tier == "dropped")


def test_context_detail_prices_every_option(store, fixture_db):
    detail = read_context(store, "ctx-00003", now=fixture_db.now)
    assert detail.row.id == "ctx-00003" and detail.placement is not None
    chosen = [o for o in detail.options if o.chosen]
    assert len(chosen) == 1 and (chosen[0].tier, chosen[0].codec) == (detail.placement.tier, detail.placement.codec)
    assert chosen[0].stored_bytes == detail.placement.stored_bytes
    assert any(o.tier == "dropped" for o in detail.options)
    assert {o.tier for o in detail.options} == {"gpu", "cpu", "disk", "dropped"}
    for o in detail.options:
        assert o.predicted_ttft_s is not None and o.predicted_ttft_s > 0
    utilities = [o.utility for o in detail.options]
    assert utilities == sorted(utilities, reverse=True)
    # a faster tier never predicts a slower load of the same codec
    by_tier = {o.tier: o.predicted_ttft_s for o in detail.options if o.codec == "none"}
    assert by_tier["gpu"] <= by_tier["cpu"] <= by_tier["disk"]
    assert detail.events and all(e.context_id == "ctx-00003" for e in detail.events)
    assert detail.cost_model == "default"


def test_context_detail_of_an_unknown_id(store):
    with pytest.raises(NoSuchContextError):
        read_context(store, "nope")


def test_read_events_paging_after_an_id(store, fixture_db):
    first = read_events(store, after_id=0, limit=10)
    assert [e.id for e in first] == list(range(1, 11))
    nxt = read_events(store, after_id=first[-1].id, limit=10)
    assert nxt[0].id == 11
    latest = read_events(store, limit=3)
    assert [e.id for e in latest] == [fixture_db.events - 1, fixture_db.events, fixture_db.events + 1]
    assert read_events(store, ids=(2, 5)) == (first[1], first[4])
    assert read_events(store, ids=()) == ()


def test_context_detail_uses_the_managers_cost_model(tmp_path, make_fixture_db):
    model = {"prefill_coef": [0.5, 0.0, 0.0], "decode_bps": {"quant": 1e6}, "history": []}
    info = make_fixture_db(tmp_path / "cm.db", 10, cost_model=model)
    with Store.open(info.path, readonly=True) as store:
        detail = read_context(store, "ctx-00001", now=info.now)
    assert detail.cost_model == "manager"
    dropped = next(o for o in detail.options if o.tier == "dropped")
    assert dropped.predicted_ttft_s == pytest.approx(0.5)  # a flat 0.5 s prefill, whatever the length
    int8_disk = next(o for o in detail.options if o.codec == "int8" and o.tier == "disk")
    # load from disk + decode at 1 MB/s + 0.5 s prefill of the query
    assert int8_disk.predicted_ttft_s == pytest.approx(int8_disk.stored_bytes / 1.2e9 + int8_disk.stored_bytes / 1e6 + 0.5)


def test_context_detail_utilities_against_hand_arithmetic(tmp_path, make_fixture_db):
    """An oracle written out by hand, not pricing's code: with a flat 0.5 s prefill and decode
    at 1 MB/s, U = freq * (alpha * quality - (bytes / read_bps + bytes / 1e6 + 0.5)); and
    the gpu tier, probed slower (1 B/s) than the cpu tier below it, is priced at the cpu's rate."""
    decode_bps = {family: 1e6 for family in ("none", "drop", "quant", "drop+quant")}
    model = {"prefill_coef": [0.5, 0.0, 0.0], "decode_bps": decode_bps, "history": []}
    info = make_fixture_db(tmp_path / "cm.db", 10, cost_model=model)
    with Store.open(info.path) as writer, writer.transaction() as conn:
        conn.execute("UPDATE tiers SET read_bps = 1.0 WHERE name = 'gpu'")
    with Store.open(info.path, readonly=True) as store:
        detail = read_context(store, "ctx-00001", now=info.now)
    freq, alpha = detail.row.freq, detail.alpha
    read_bps = {"gpu": 8e9, "cpu": 8e9, "disk": 1.2e9}  # gpu clamped up to the cpu's bandwidth
    for o in detail.options:
        if o.tier == "dropped":
            ttft = 0.5
        else:
            ttft = o.stored_bytes / read_bps[o.tier] + o.stored_bytes / 1e6 + 0.5
        assert o.predicted_ttft_s == pytest.approx(ttft, rel=1e-6)
        assert o.utility == pytest.approx(freq * (alpha * o.quality - ttft), rel=1e-5, abs=1e-9)
