"""The issue-16 parts of a bench run end to end: baselines, best-fixed, ideal, gap closed,
the max-QPS table and the frequency-estimator switch."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from evicctl.errors import UnknownNameError
from evicctl.replay import run_bench
from evicctl.replay.policies import make_policy

POLICIES = ["prefill", "lru", "tinylfu:int4", "arc", "gdsf:int4", "best-fixed", "evicpress", "evicpress@0.5", "placement-only", "ideal"]


def bench(scenario_file, profiles_file, **kw):
    out = io.StringIO()
    opts = dict(scenario=str(scenario_file), profiles=profiles_file, policies=POLICIES, contexts=80,
                requests=800, seed=5, progress=False, console=Console(file=out, width=220), jobs=1)
    return run_bench(**(opts | kw)), out.getvalue()


def test_every_baseline_best_fixed_ideal_and_the_qps_table(scenario_file, profiles_file):
    doc, text = bench(scenario_file, profiles_file)
    names = [r["policy"] for r in doc["runs"]]
    assert "best-fixed" not in names and "fixed:int4" in names and "fixed:int8" in names  # the sweep ran
    cmp = doc["comparisons"]
    assert cmp["best_baseline"]["quality"] >= 0.97 - 1e-3
    assert cmp["gap_closed"]["lru"] == 0 and cmp["gap_closed"]["ideal"] == pytest.approx(1)
    # every run gets max QPS but a fixed codec under the target (no equal-quality baseline)
    for r in doc["runs"]:
        below = r["family"] == "fixed" and r["quality_mean"] < 0.97 - 1e-3
        assert ("max_qps" not in r) if below else (r["max_qps"] >= 0 and r["slo_p99_s"] > 0), r["policy"]
    ideal = next(r for r in doc["runs"] if r["policy"] == "ideal")
    # ideal meets the target per context; a policy meeting it only on average could undercut it, none does here
    at_target = [r for r in doc["runs"] if r["quality_mean"] >= 0.97]
    assert all(ideal["ttft_mean_s"] <= r["ttft_mean_s"] + 1e-12 for r in at_target)
    for words in ("best baseline", "best-fixed", "gap closed", "max QPS", "ideal"):
        assert words in text, words


def test_throughput_can_be_left_out(scenario_file, profiles_file):
    doc, text = bench(scenario_file, profiles_file, policies=["lru", "evicpress"], throughput=False)
    assert "max_qps" not in doc["runs"][0] and "max QPS" not in text


def test_frequency_estimators_by_name():
    assert make_policy("placement-only", alpha=2.0, freq_estimator="single").freq_options == {"ladder": (1.0,), "prior_count": 0.0}
    assert make_policy("evicpress", alpha=2.0).freq_options == {}
    with pytest.raises(UnknownNameError, match="learned"):
        make_policy("evicpress", alpha=2.0, freq_estimator="oracle")
