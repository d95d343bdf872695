"""Pricing the manager's contexts into a PlacementProblem: cached rows must never go stale."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from evicctl.manager.costs import CostModel
from evicctl.manager.placer.place import DROPPED, NEW, NO_PIN
from evicctl.manager.placer.pricing import codec_sizes, option_rows, price_problem
from evicctl.manager.state import ContextState

CODECS = ("none", "int8", "int4", "knorm@0.5")
SHAPE = (2, 2, 32, 4, 0)  # layers, kv_heads, head_dim, dtype_bytes, window_numel
TIERS = [SimpleNamespace(name="cpu", capacity_bytes=10**9, read_bps=1e10),
         SimpleNamespace(name="disk", capacity_bytes=10**10, read_bps=1e9)]  # fmt: skip


def make_state(i: int, tokens: int) -> ContextState:
    ctx = ContextState(f"c{i}", tokens, tokens * 1024, created_at=0.0)
    ctx.set_sizes(codec_sizes(CODECS, tokens, SHAPE, ctx.raw_bytes))
    ctx.keep_profile("int8", 0.99, 0.01, "teacher-forced")
    ctx.keep_profile("int4", 0.8 + 0.01 * i, 0.05, "teacher-forced")
    return ctx


def price(states, **kw):
    return price_problem(states, np.ones(len(states)), codecs=CODECS, tiers=TIERS, cost_model=CostModel(),
                         alpha=2.0, query_tokens=32, floor_of=lambda s: 0.0, **kw)  # fmt: skip


def plain_copy(ctx: ContextState) -> SimpleNamespace:
    """The same context as a plain object: priced from scratch, no cache."""
    fields = ("id", "tokens", "raw_bytes", "miss_s", "stored", "tier", "codec", "stored_bytes",
              "pin_tier", "pin_codec", "min_tier")  # fmt: skip
    return SimpleNamespace(**{f: getattr(ctx, f) for f in fields}, sizes=dict(ctx.sizes), profiles=dict(ctx.profiles))


def assert_same(a, b) -> None:
    for name in ("stored_bytes", "quality", "quality_lower", "profiled", "ttft_s", "miss_ttft_s", "current_tier",
                 "current_codec", "pin_tier", "pin_codec", "force_tier", "force_codec", "min_tier"):  # fmt: skip
        assert np.array_equal(getattr(a, name), getattr(b, name)), name


def test_cached_rows_follow_profile_and_size_changes():
    states = [make_state(i, 64 + 16 * i) for i in range(4)]
    states[1].tier, states[1].codec, states[1].stored_bytes = "disk", "int8", 777  # a real copy's size
    states[2].pin_tier, states[2].min_tier = "cpu", 1
    first = price(states)
    assert first.stored_bytes[1, 1] == 777 and first.current_tier.tolist() == [NEW, 1, NEW, NEW]
    assert first.pin_tier.tolist() == [NO_PIN, NO_PIN, 0, NO_PIN] and first.min_tier.tolist() == [0, 0, 1, 0]
    assert_same(first, price([plain_copy(s) for s in states]))
    rows = option_rows(states[0], CODECS, [])
    assert option_rows(states[0], CODECS, []) is rows  # cached: the codec objects are not even needed
    # A new profile, a better one of the preferred metric, and new sizes all show in the next plan.
    states[0].keep_profile("knorm@0.5", 0.7, 0.1, "teacher-forced")
    states[3].keep_profile("int4", 0.5, 0.0, "teacher-forced")
    states[2].set_sizes(codec_sizes(CODECS, 500, SHAPE, 500 * 1024))
    states[2].tokens = 500
    second = price(states)
    assert second.profiled[3, 0] and second.quality[3, 0] == pytest.approx(0.7)
    assert second.quality[2, 3] == pytest.approx(0.5)
    assert second.stored_bytes[0, 2] > first.stored_bytes[0, 2]
    assert_same(second, price([plain_copy(s) for s in states]))


def test_admission_overrides_and_dropped():
    states = [make_state(i, 64) for i in range(3)]
    states[0].tier, states[0].codec, states[0].stored_bytes = "cpu", "none", 100
    p = price(states, admit="c2", overrides={"c0": {"force_tier": "dropped"}, "c1": {"pin_codec": "int8"},
                                             "nobody": {"force_tier": "cpu"}})  # fmt: skip
    assert p.current_tier.tolist() == [0, NEW, NEW]
    assert p.force_tier.tolist() == [DROPPED, NO_PIN, NO_PIN]
    assert p.pin_codec.tolist() == [NO_PIN, 1, NO_PIN]
    empty = price([])
    assert empty.stored_bytes.shape == (len(CODECS), 0) and empty.ttft_s.shape == (2, len(CODECS), 0)
