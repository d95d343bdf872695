"""The delay model: defaults, fitting, decode throughput, TTFT predictions, persistence."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from evicctl.manager.costs import (
    DEFAULT_PREFILL_COEF,
    HISTORY,
    CostModel,
    as_prefill_coef,
    decode_key,
    miss_ttft_s,
    predicted_ttft_s,
)

H200_COSTS = Path(__file__).resolve().parents[2] / "evicctl" / "data" / "h200_costs.json"


def test_defaults_match_the_measured_cpu_prefill() -> None:
    model = CostModel()
    assert model.prefill_s(1000) == pytest.approx(1.8, rel=0.02)  # DESIGN §8
    assert model.prefill_s(0, 5000) == 0.0
    assert model.prefill_s(20, 1000) < 0.2  # a question over a cached context is cheap
    assert model.prefill_s(20, 4000) > model.prefill_s(20, 1000)
    # the cached term: a short query pays for the prefix it runs on, whatever its length
    assert model.prefill_s(1, 4000) - model.prefill_s(1, 0) > 3000 * DEFAULT_PREFILL_COEF[2]


@pytest.mark.parametrize("cached_s", [0.0, 3e-5])
def test_fit_recovers_the_cost(cached_s: float) -> None:
    truth = np.array([0.1, 2e-3, cached_s, 4e-7])
    model = CostModel()
    rng = np.random.default_rng(0)
    for _ in range(40):
        new, cached = int(rng.integers(10, 3000)), int(rng.integers(0, 8000))
        seconds = truth @ [1, new, cached, new * (new + cached)] * (1 + 0.01 * rng.standard_normal())
        model.observe_prefill(new, cached, seconds)
    assert model.n_observations == 40 and model.fit_kind == "full"
    for new, cached in ((1000, 0), (50, 2000), (3000, 1000), (16, 8000)):
        want = truth @ [1, new, cached, new * (new + cached)]
        assert model.prefill_s(new, cached) == pytest.approx(want, rel=0.05)


def test_h200_samples_fit_short_queries_on_long_prefixes() -> None:
    """The H200 samples (Llama-3.1-8B shape): with the cached term a 16-token query on a 32k
    prefix is fitted within 10% (the three-term form was 41% low), the worst sample 50%."""
    samples = json.loads(H200_COSTS.read_text())["prefill_samples"]
    model = CostModel(history=samples)
    errors = {(n, c): abs(model.prefill_s(n, c) - s) / s for n, c, s in samples}
    assert errors[(16, 32768)] < 0.1 and errors[(64, 32768)] < 0.1
    assert max(errors.values()) < 0.5
    three_term = CostModel(prefill_coef=json.loads(H200_COSTS.read_text())["prefill_coef"])
    assert three_term.coef[2] == 0.0  # the stored three-term fit reads as c = 0
    assert abs(three_term.prefill_s(16, 32768) / 0.0657 - 1) > 0.3


def test_misses_alone_fit_all_but_the_cached_term() -> None:
    """Only full prefills (cached = 0) say nothing of c: it is the scaled default, the rest fitted."""
    truth = np.array([0.02, 3e-4, 0.0, 2e-8])
    model = CostModel()
    for new in (100, 400, 900, 1600, 2500):
        model.observe_prefill(new, 0, float(truth @ [1, new, 0, new * new]))
    assert model.fit_kind == "partial"
    assert model.prefill_s(2000, 0) == pytest.approx(truth @ [1, 2000, 0, 2000 * 2000], rel=1e-3)
    assert 0 < model.coef[2] < DEFAULT_PREFILL_COEF[2]  # this machine is faster than the default

def test_few_observations_scale_the_default_shape() -> None:
    model = CostModel()
    model.observe_prefill(1000, 0, 3.6)  # this machine is twice as slow
    assert model.prefill_s(1000) == pytest.approx(3.6)
    assert model.prefill_s(500) == pytest.approx(2 * CostModel().prefill_s(500))
    model.observe_prefill(1000, 0, 3.6)
    model.observe_prefill(1000, 0, 3.6)
    model.observe_prefill(1000, 0, 3.6)  # one size only: still the scaled default
    assert np.allclose(model.coef, 2 * np.array(DEFAULT_PREFILL_COEF)) and model.fit_kind == "scaled"


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
    # an observation moves the estimate towards what was seen, never past it, and repeated
    # observations converge on it (whatever the smoothing weight is)
    model.observe_decode("quant", int(4e9), 1.0)
    assert 2e9 < model.decode_bps("quant") < 4e9
    for _ in range(200):
        model.observe_decode("quant", int(4e9), 1.0)
    assert model.decode_bps("quant") == pytest.approx(4e9, rel=1e-3)
    with pytest.raises(ValueError, match="quant"):
        model.decode_bps("zip")


def test_probe_decode_measures_something() -> None:
    model = CostModel(decode_bps={"quant": 1.0, "drop+quant": 1.0})
    measured = model.probe_decode()
    assert measured["quant"] > 1e6 and measured["drop+quant"] > 1e6


@pytest.mark.parametrize(
    ("codec", "key"),
    [("none", "none"), ("snapkv@0.5", "drop"), ("int8", "quant:int8"), ("int4-g64", "quant:int4"),
     ("int3-r0", "quant:int3"), ("knorm@0.5+int2", "drop+quant:int2"), ("quant", "quant"),
     ("drop+quant:int4", "drop+quant:int4")],
)  # fmt: skip
def test_decode_key_is_family_and_width(codec: str, key: str) -> None:
    assert decode_key(codec) == key


@pytest.mark.parametrize("bad", ["zip", "quant:int5", "drop:int4", "int9"])
def test_decode_key_rejects_what_is_not_a_codec(bad: str) -> None:
    with pytest.raises(ValueError):
        decode_key(bad)


def test_a_width_not_measured_is_priced_at_its_family_then_learns_alone() -> None:
    """Cost files written before per-width entries hold families only: they price as before."""
    model = CostModel(decode_bps={"quant": 2e9, "drop+quant": 3e9})
    assert model.decode_bps("int4") == model.decode_bps("int2-g64") == 2e9
    assert model.decode_bps("snapkv@0.5+int2") == 3e9
    for _ in range(200):  # a manager's hits observe per codec name: only that width moves
        model.observe_decode("int2", int(5e8), 1.0)
    assert model.decode_bps("int2") == pytest.approx(5e8, rel=1e-3)
    assert model.decode_bps("int2-g64") == model.decode_bps("int2")  # same width, same entry
    assert model.decode_bps("int4") == model.decode_bps("quant") == 2e9
    assert model.decode_bps("knorm@0.5+int2") == 3e9  # another family's entry


def test_probe_decode_records_every_width_and_pricing_uses_it() -> None:
    from evicctl.manager.codecs.names import QUANTIZERS
    from evicctl.manager.placer.pricing import price_options

    model = CostModel(decode_bps={"quant": 1.0, "drop+quant": 1.0})
    measured = model.probe_decode()
    for width in QUANTIZERS:
        for key in (f"quant:{width}", f"drop+quant:{width}"):
            assert measured[key] > 1e5, key  # measured, not the 1 B/s given
    assert measured["quant"] == measured["quant:int8"]  # a bare family prices at int8's
    # the probe's figures are what the placer prices each codec's decode with: set them apart
    # (speeds on a shared CPU are too noisy to compare) and price every width at once
    distinct = {**measured, **{f"quant:{w}": 1e8 * (i + 1) for i, w in enumerate(QUANTIZERS)}}
    model = CostModel(decode_bps=distinct)
    codecs = [*QUANTIZERS, "knorm@0.5+int3"]
    stored = np.full((len(codecs), 1), 6e8)
    prices = price_options(stored, np.full((len(codecs), 1), 500), codecs, [1000], read_bps=[1e9],
                           cost_model=model, query_tokens=20)  # fmt: skip
    expected = [6e8 / (1e8 * (i + 1)) for i in range(len(QUANTIZERS))] + [6e8 / measured["drop+quant:int3"]]
    assert np.allclose(prices.decode_s[:, 0], expected)
    assert len(set(prices.decode_s[: len(QUANTIZERS), 0])) == len(QUANTIZERS)
    back = CostModel.from_dict(json.loads(json.dumps(model.to_dict())))  # and they persist
    assert back.decode_bps("int2") == model.decode_bps("int2") == 4e8


def test_round_trip_through_json() -> None:
    model = CostModel(decode_bps={"quant": 3e9})
    for new, cached in ((100, 100), (500, 0), (1000, 3000), (2000, 100), (4000, 800)):
        model.observe_prefill(new, cached, 0.1 + 1e-3 * new + 2e-5 * cached + 1e-7 * new * (new + cached))
    back = CostModel.from_dict(json.loads(json.dumps(model.to_dict())))
    assert np.allclose(back.coef, model.coef) and back.decode_bps("quant") == 3e9
    assert back.prefill_s(1234, 56) == pytest.approx(model.prefill_s(1234, 56))
    back.observe_prefill(800, 0, 0.1 + 0.8 + 1e-7 * 640000)  # keeps learning from the restored history
    assert back.n_observations == 6
    assert CostModel.from_dict({}).prefill_s(1000) == pytest.approx(CostModel().prefill_s(1000))


def test_three_term_dicts_still_load() -> None:
    """Stored manager configs and cost files written before the cached term: (a, b, d)."""
    old = {"prefill_coef": [0.5, 1e-3, 2e-7], "default_prefill_coef": [0.05, 1.6e-3, 1.5e-7],
           "decode_bps": {"quant": 1e6}, "history": []}  # fmt: skip
    model = CostModel.from_dict(old)
    assert np.array_equal(model.coef, [0.5, 1e-3, 0.0, 2e-7])
    assert model.prefill_s(100, 50) == pytest.approx(0.5 + 0.1 + 2e-7 * 100 * 150)  # as it predicted
    assert np.array_equal(model.default_coef, [0.05, 1.6e-3, 0.0, 1.5e-7])
    assert CostModel.from_dict({"prefill_coef": [0.5, 0.0, 0.0]}).prefill_s(10, 10) == pytest.approx(0.5)
    # with a history that pins all four terms, its refit replaces the three-term coefficients
    h200 = json.loads(H200_COSTS.read_text())["cost_model"]
    assert len(h200["prefill_coef"]) == 3
    refit = CostModel.from_dict(h200)
    assert refit.fit_kind == "full" and refit.coef[2] > 0
    assert json.loads(json.dumps(refit.to_dict()))["prefill_coef"] == pytest.approx(list(refit.coef))


def test_bad_coefficients_are_refused() -> None:
    with pytest.raises(ValueError):
        CostModel(prefill_coef=(1.0, -1.0, 0.0))
    with pytest.raises(ValueError):
        CostModel(prefill_coef=(1.0, 2.0))
    with pytest.raises(ValueError):
        CostModel(prefill_coef=(1.0, 2.0, 3.0, 4.0, 5.0))
    with pytest.raises(ValueError):
        as_prefill_coef((1.0, 0.0, float("nan"), 0.0))
    assert np.array_equal(as_prefill_coef((1, 2, 3)), [1.0, 2.0, 0.0, 3.0])
