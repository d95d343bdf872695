"""The replay prices options exactly as the Manager does, and its profiles split honestly."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from evicctl.config import DEFAULT_CODECS
from evicctl.manager.placer.pricing import codec_sizes, price_problem
from evicctl.replay.catalog import build_catalog
from evicctl.replay.profiles import profiles_from_scores


def test_catalog_prices_like_the_manager(scenario, profiles):
    catalog = build_catalog(scenario, profiles, 6, seed=4)
    m = scenario.model
    shape = (m.layers, m.kv_heads, m.head_dim, m.dtype_bytes, m.window_numel)
    states = []
    for i in range(catalog.n_contexts):
        tokens = int(catalog.tokens[i])
        states.append(SimpleNamespace(
            id=f"ctx{i}", tokens=tokens, raw_bytes=0, sizes=codec_sizes(catalog.codecs, tokens, shape, 0),
            profiles={c: (float(catalog.estimate[k, i]), 0.0, "teacher-forced") for k, c in enumerate(catalog.codecs)},
            miss_s=None, stored=False, tier="dropped", codec="none", stored_bytes=0,
            pin_tier=None, pin_codec=None, min_tier=0,
        ))
    tiers = [SimpleNamespace(name=t.name, capacity_bytes=int(c), read_bps=t.read_bps)
             for t, c in zip(scenario.tiers, catalog.capacity_bytes, strict=True)]
    problem = price_problem(
        states, np.ones(len(states)), codecs=catalog.codecs, tiers=tiers, cost_model=catalog.cost_model,
        alpha=scenario.alpha, query_tokens=catalog.query_tokens_mean, floor_of=lambda s: 0.0,
    )
    assert np.array_equal(problem.stored_bytes, catalog.stored_bytes)
    assert np.allclose(problem.ttft_s, catalog.ttft_s, rtol=1e-6)
    assert np.allclose(problem.miss_ttft_s, catalog.miss_ttft_s)
    assert np.allclose(problem.quality, catalog.estimate)


def test_sizes_follow_the_codecs(scenario, profiles):
    catalog = build_catalog(scenario, profiles, 20, seed=0)
    none, int8, drop = (catalog.codec_index(c) for c in ("none", "int8", "knorm@0.5"))
    raw = 2 * 30 * 3 * 64 * 4 * catalog.tokens  # SmolLM2 fp32 KV bytes
    assert (catalog.stored_bytes[none] >= raw).all()  # + the snapkv window queries
    assert (catalog.stored_bytes[int8] < 0.3 * catalog.stored_bytes[none]).all()
    assert (catalog.kept_tokens[drop] == catalog.tokens // 2).all()
    assert (catalog.ttft_s[0] <= catalog.ttft_s[1]).all()  # the cpu tier loads faster than disk
    total = catalog.stored_bytes[none].sum()
    assert catalog.capacity_bytes.sum() == pytest.approx(scenario.capacity * total, rel=1e-6)
    assert catalog.capacity_bytes[1] == pytest.approx(10 * catalog.capacity_bytes[0], rel=1e-6)


def test_profile_halves_and_bootstrap():
    scores = [
        {"none": [1, 1, 1, 1], "int4": [0.9, 0.9, 0.5, 0.5]},
        {"none": [1, 1, 1, 1], "int4": [0.6, 0.6, 0.8, 0.8]},
    ]
    p = profiles_from_scores(codecs=("none", "int4"), scores=scores, context_ids=("a", "b"), tokens=[100, 200])
    assert p.truth[:, 1].tolist() == pytest.approx([0.5, 0.8])  # the test half
    assert p.estimate[:, 0].tolist() == [1.0, 1.0]
    # the estimate comes from the profiling half (0.9 and 0.6), shrunk toward their mean
    assert 0.6 <= p.estimate[1, 1] <= p.estimate[0, 1] <= 0.9


def test_noise_touches_estimates_only(scenario):
    scores = [{c: [0.8] * 4 for c in DEFAULT_CODECS} for _ in range(5)]
    p = profiles_from_scores(codecs=DEFAULT_CODECS, scores=scores, context_ids=tuple("abcde"), tokens=[900] * 5)
    clean = build_catalog(scenario, p, 50, seed=1)
    noisy = build_catalog(scenario, p, 50, seed=1, noise_sd=0.2)
    assert np.array_equal(clean.truth, noisy.truth)
    none = clean.codec_index("none")
    assert np.array_equal(noisy.estimate[none], clean.estimate[none])
    assert np.abs(noisy.estimate - clean.estimate).mean() > 0.05


def test_noise_leaves_the_workload_alone(profiles):
    """Drawn context lengths (h200's log-uniform) must not move when noise is added."""
    from evicctl.replay.scenario import load_scenario

    h200 = load_scenario("h200")
    clean = build_catalog(h200, profiles, 300, seed=3)
    noisy = build_catalog(h200, profiles, 300, seed=3, noise_sd=0.1)
    assert np.array_equal(clean.tokens, noisy.tokens)
    assert np.array_equal(clean.profile_source, noisy.profile_source)
