"""The delay model: defaults, fitting, decode throughput, TTFT predictions, persistence."""

from __future__ import annotations

import json

import numpy as np
import pytest

from evicctl.manager.costs import (
    DEFAULT_PREFILL_COEF,
    HISTORY,
    CostModel,
    miss_ttft_s,
    predicted_ttft_s,
)


def test_defaults_match_the_measured_cpu_prefill() -> None:
    model = CostModel()
    assert model.prefill_s(1000) == pytest.approx(1.8, rel=0.02)  # DESIGN §8
    assert model.prefill_s(0, 5000) == 0.0
    assert model.prefill_s(20, 1000) < 0.2  # a question over a cached context is cheap
    assert model.prefill_s(20, 4000) > model.prefill_s(20, 1000)


def test_fit_recovers_a_quadratic_cost() -> None:
    truth = np.array([0.1, 2e-3, 4e-7])
    model = CostModel()
    rng = np.random.default_rng(0)
    for _ in range(40):
        new, cached = int(rng.integers(10, 3000)), int(rng.integers(0, 4000))
        seconds = truth @ [1, new, new * (new + cached)] * (1 + 0.01 * rng.standard_normal())
        model.observe_prefill(new, cached, seconds)
    assert model.n_observations == 40
    for new, cached in ((1000, 0), (50, 2000), (3000, 1000)):
        want = truth @ [1, new, new * (new + cached)]
        assert model.prefill_s(new, cached) == pytest.approx(want, rel=0.05)


def test_few_observations_scale_the_default_shape() -> None:
    model = CostModel()
    model.observe_prefill(1000, 0, 3.6)  # this machine is twice as slow
    assert model.prefill_s(1000) == pytest.approx(3.6)
    assert model.prefill_s(500) == pytest.approx(2 * CostModel().prefill_s(500))
    model.observe_prefill(1000, 0, 3.6)
    model.observe_prefill(1000, 0, 3.6)
    model.observe_prefill(1000, 0, 3.6)  # one size only: still the scaled default
    assert np.allclose(model.coef, 2 * np.array(DEFAULT_PREFILL_COEF))


def test_fit_stays_monotone_under_noise_and_ignores_bad_reports() -> None:
    model = CostModel()
    rng = np.random.default_rng(1)
    for _ in range(30):
        new = int(rng.integers(1, 2000))
        model.observe_prefill(new, 0, abs(0.5 + rng.standard_normal()))  # pure noise
    assert (model.coef >= 0).all()
    sizes = np.arange(0, 5000, 100)
    assert (np.diff(model.prefill_s(sizes, 0)) >= 0).all()
    before = model.coef.copy()
    for bad in ((0, 10, 1.0), (10, -1, 1.0), (10, 0, 0.0), (10, 0, float("nan"))):
        model.observe_prefill(*bad)
    assert np.array_equal(model.coef, before) and model.n_observations == 30


def test_history_is_bounded() -> None:
    model = CostModel()
    for i in range(HISTORY + 50):
        model.observe_prefill(100 + i, 0, 0.2 + 1e-3 * i)
    assert model.n_observations == HISTORY


def test_predictions_are_vectorised() -> None:
    model = CostModel()
    stored = np.array([46e6, 12e6, 0.0])
    read_bps = np.array([1e9, 1e9, 5e9])
    decode = np.array([0.0, 0.01, 0.0])
    kept = np.array([1000, 500, 1000])
    ttft = predicted_ttft_s(stored, read_bps, decode, 20, kept, model)
    assert ttft.shape == (3,)
    assert ttft[0] == pytest.approx(0.046 + model.prefill_s(20, 1000))
    assert ttft[1] == pytest.approx(0.012 + 0.01 + model.prefill_s(20, 500))
    one = predicted_ttft_s(46e6, 1e9, 0.0, 20, 1000, model)
    assert isinstance(one, float) and one == pytest.approx(ttft[0])
    miss = miss_ttft_s(np.array([1000, 4000]), 20, model)
    assert miss[0] == pytest.approx(model.prefill_s(1020)) and miss[1] > miss[0] > one


def test_a_hit_beats_a_miss_by_default() -> None:
    model = CostModel()
    raw = 2 * 30 * 3 * 1000 * 64 * 4  # SmolLM2, 1k tokens, fp32
    disk_hit = predicted_ttft_s(raw, 1e9, model.decode_s("none", raw), 20, 1000, model)
    int4_hit = predicted_ttft_s(raw / 7, 1e9, model.decode_s("quant", raw / 7), 20, 1000, model)
    assert max(disk_hit, int4_hit) < miss_ttft_s(1000, 20, model) / 5


def test_decode_throughput_per_family() -> None:
    model = CostModel(decode_bps={"quant": 2e9})
    assert model.decode_bps("quant") == 2e9 and model.decode_s("quant", 4e9) == pytest.approx(2.0)
    assert model.decode_bps("none") > 1e11  # decoding `none` moves nothing
    assert np.allclose(model.decode_s("quant", np.array([2e9, 4e9])), [1.0, 2.0])
    model.observe_decode("quant", int(4e9), 1.0)
    assert model.decode_bps("quant") == pytest.approx(0.8 * 2e9 + 0.2 * 4e9)
    with pytest.raises(ValueError, match="quant"):
        model.decode_bps("zip")


def test_probe_decode_measures_something() -> None:
    model = CostModel(decode_bps={"quant": 1.0, "drop+quant": 1.0})
    measured = model.probe_decode()
    assert measured["quant"] > 1e6 and measured["drop+quant"] > 1e6


def test_round_trip_through_json() -> None:
    model = CostModel(decode_bps={"quant": 3e9})
    for new in (100, 500, 1000, 2000, 4000):
        model.observe_prefill(new, 100, 0.1 + 1e-3 * new + 1e-7 * new * (new + 100))
    back = CostModel.from_dict(json.loads(json.dumps(model.to_dict())))
    assert np.allclose(back.coef, model.coef) and back.decode_bps("quant") == 3e9
    assert back.prefill_s(1234, 56) == pytest.approx(model.prefill_s(1234, 56))
    back.observe_prefill(800, 0, 0.1 + 0.8 + 1e-7 * 640000)  # keeps learning from the restored history
    assert back.n_observations == 6
    assert CostModel.from_dict({}).prefill_s(1000) == pytest.approx(CostModel().prefill_s(1000))


def test_bad_coefficients_are_refused() -> None:
    with pytest.raises(ValueError):
        CostModel(prefill_coef=(1.0, -1.0, 0.0))
    with pytest.raises(ValueError):
        CostModel(prefill_coef=(1.0, 2.0))
