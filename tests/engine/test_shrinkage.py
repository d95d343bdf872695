"""Shrinkage: tallies are exact, hyperparameters are recovered, estimates move between the
pooled and own means as evidence grows, and beat both raw and pooled on held-out data."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from evicctl.engine.shrinkage import CodecStats, Tally, codec_stats, estimate, leave_one_out_stats


@given(st.lists(st.floats(0, 1), min_size=1, max_size=30))
def test_tally_matches_numpy(xs):
    t = Tally.of(xs)
    assert t.n == len(xs) and t.mean == pytest.approx(np.mean(xs), abs=1e-9)
    assert t.m2 == pytest.approx(np.var(xs) * len(xs), abs=1e-9)


def test_summary_tally_keeps_mean_but_no_spread():
    t = Tally.summary(0.8, 5).add(0.2)
    assert t.n == 6 and t.mean == pytest.approx((0.8 * 5 + 0.2) / 6) and t.m2_n == 0


def _simulate(rng, contexts=400, n=8, mu=0.7, tau=0.1, sigma=0.2):
    true = rng.normal(mu, tau, contexts)
    return true, {f"c{i}": Tally.of(rng.normal(true[i], sigma, n)) for i in range(contexts)}


def test_codec_stats_recover_hyperparameters():
    _, tallies = _simulate(np.random.default_rng(0))
    s = codec_stats(tallies)
    assert s.mean == pytest.approx(0.7, abs=0.02)
    assert s.tau2 == pytest.approx(0.01, rel=0.3) and s.sigma2 == pytest.approx(0.04, rel=0.1)


def test_estimate_moves_from_pooled_to_own_mean():
    stats = CodecStats(mean=0.6, tau2=0.01, sigma2=0.04, contexts=20, mean_var=0.0005)
    none = estimate(Tally(), stats)
    assert none.quality == 0.6 and none.raw_mean is None and none.weight == 0
    few, many = estimate(Tally.of([0.9] * 2), stats), estimate(Tally.of([0.9] * 200), stats)
    assert 0.6 < few.quality < many.quality < 0.9 + 1e-9
    assert few.weight == pytest.approx(0.01 / (0.01 + 0.02))
    assert many.sd < few.sd < none.sd
    assert few.lower_bound(1.645) == pytest.approx(few.quality - 1.645 * few.sd)
    flat = CodecStats(mean=0.6, tau2=0.0, sigma2=0.04, contexts=20, mean_var=0.001)
    assert estimate(Tally.of([0.95] * 3), flat).quality == pytest.approx(0.6)  # no between-context spread


def test_prior_dominates_with_one_context_and_fades():
    prior = CodecStats(mean=0.5, tau2=0.01, sigma2=0.04, contexts=8, mean_var=0.001)
    one = codec_stats({"a": Tally.of([0.9, 0.95])}, prior)
    assert 0.5 < one.mean < 0.7
    rng = np.random.default_rng(2)
    lots = codec_stats({f"c{i}": Tally.of(rng.normal(0.9, 0.1, 4)) for i in range(400)}, prior)
    assert lots.mean == pytest.approx(0.9, abs=0.02)


def test_shrinkage_beats_raw_and_pooled_held_out():
    rng = np.random.default_rng(1)
    true, _ = _simulate(rng, contexts=500, n=0)
    sigma = 0.2
    errors = {"raw": [], "pooled": [], "shrink": []}
    profile = {f"c{i}": Tally.of(rng.normal(true[i], sigma, 3)) for i in range(500)}
    held = {f"c{i}": rng.normal(true[i], sigma, 8).mean() for i in range(500)}
    for ctx, tally in profile.items():
        stats = leave_one_out_stats(profile, ctx)
        errors["raw"].append(abs(tally.mean - held[ctx]))
        errors["pooled"].append(abs(stats.mean - held[ctx]))
        errors["shrink"].append(abs(estimate(tally, stats).quality - held[ctx]))
    mae = {k: float(np.mean(v)) for k, v in errors.items()}
    assert mae["shrink"] <= mae["pooled"] and mae["shrink"] < mae["raw"]
