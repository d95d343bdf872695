"""The access-rate estimator (evicctl.manager.freq): what the placer weighs options by."""

from __future__ import annotations

import numpy as np
import pytest

from evicctl.manager.freq import DecayedRate, RateTable


def poisson_times(rng, rate_per_s: float, until_s: float) -> np.ndarray:
    return np.cumsum(rng.exponential(1 / rate_per_s, int(rate_per_s * until_s * 1.5) + 10))


def replay_accesses(table: RateTable, rates_per_s: np.ndarray, until_s: float, seed: int = 0, start_s: float = 0.0):
    rng = np.random.default_rng(seed)
    events = [(start_s + t, i) for i, r in enumerate(rates_per_s) for t in poisson_times(rng, r, until_s) if t < until_s]
    for t, i in sorted(events):
        table.record(i, t)
    return start_s + until_s


def test_a_context_seen_once_does_not_decay_to_zero():
    """The old estimator's failure: asked once an hour ago, rate ~0 at a 300 s half-life."""
    table = RateTable(300.0, 4)
    table.record(0, 0.0)
    table.record(1, 3600.0)
    table.record(1, 3601.0)
    rates = table.rates(np.array([0, 1, 2]), 3700.0)
    assert rates[0] > 1e-5 and rates[1] > rates[0] and rates[2] == 0.0


def test_a_steady_rate_is_estimated_and_stationary_popularity_learns_a_long_half_life():
    true = np.array([0.5, 0.05, 0.005, 0.005, 0.0005])
    table = RateTable(30.0, len(true))
    now = replay_accesses(table, true, 40_000.0)
    est = table.rates(np.arange(len(true)), now)
    assert est[:2] == pytest.approx(true[:2], rel=0.25)
    assert list(np.argsort(-est[:3])) == [0, 1, 2]
    assert table.chosen_half_life_s >= 900.0  # longer memory predicts a stationary workload better


def test_drift_learns_a_shorter_half_life_than_a_stationary_workload():
    """Popularity that swaps every 600 s is predicted better by a short memory."""
    hot, cold = np.array([0.5, 0.001]), np.array([0.001, 0.5])
    drifting = RateTable(30.0, 2)
    now = 0.0
    for phase in range(20):
        now = replay_accesses(drifting, hot if phase % 2 == 0 else cold, 600.0, seed=phase, start_s=now)
    steady = RateTable(30.0, 2)
    replay_accesses(steady, np.array([0.25, 0.25]), 12_000.0)
    assert drifting.chosen_half_life_s < steady.chosen_half_life_s
    assert drifting.chosen_half_life_s <= 300.0


def test_decayed_rate_is_the_table_under_ids_and_restores_after_a_restart():
    rate = DecayedRate(60.0)
    table = RateTable(60.0, 8)
    rng = np.random.default_rng(1)
    now = 0.0
    for _ in range(400):
        now += float(rng.exponential(2.0))
        i = int(rng.integers(0, 5))
        rate.record(f"c{i}", now)
        table.record(i, now)
    assert rate.rates([f"c{i}" for i in range(5)], now + 3).tolist() == pytest.approx(table.rates(np.arange(5), now + 3).tolist())
    restored = DecayedRate(60.0)
    for i in range(5):
        restored.set(f"c{i}", rate.rate(f"c{i}", now), at=now)
    assert restored.rates([f"c{i}" for i in range(5)], now).tolist() == pytest.approx(
        rate.rates([f"c{i}" for i in range(5)], now).tolist(), rel=0.05)


def test_the_old_estimator_is_one_rung_without_a_prior():
    """ladder=(1,), prior_count=0 over a long exposure reads lam * decayed count."""
    table = RateTable(10.0, 2, ladder=(1.0,), prior_count=0.0)
    table.record(0, 0.0)
    table.record(1, 1000.0)
    lam = np.log(2) / 10.0
    assert table.rates(np.array([1]), 1010.0)[0] == pytest.approx(lam / 2, rel=1e-6)
