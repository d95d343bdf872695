"""run_bench end to end on a small scenario: the JSON document, the table, the plot, errors."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from evicctl.errors import UnknownNameError, UsageError
from evicctl.replay import run_bench
from evicctl.replay.compare import pareto, ttft_at_quality
from evicctl.replay.scenario import load_scenario
from evicctl.replay.trace import csv_trace, zipf_trace

POLICIES = ["prefill", "lru", "fixed:int8", "fixed:knorm@0.25", "fixed:knorm@0.5", "evicpress", "evicpress@0.5", "evicpress@50", "placement-only"]


def bench(scenario_file, profiles_file, **kw):
    out = io.StringIO()
    opts = dict(scenario=str(scenario_file), profiles=profiles_file, policies=POLICIES, contexts=80,
                requests=800, seed=5, progress=False, console=Console(file=out, width=200))
    doc = run_bench(**(opts | kw))
    return doc, out.getvalue()


def test_json_output_shape(scenario_file, profiles_file):
    doc, text = bench(scenario_file, profiles_file, output="json")
    parsed = json.loads(text)  # stdout is the document, nothing else
    assert parsed["runs"] == json.loads(json.dumps(doc["runs"]))
    assert [r["policy"] for r in parsed["runs"]] == POLICIES
    for run in parsed["runs"]:
        for key in ("policy", "family", "ttft_mean_s", "ttft_p50_s", "ttft_p99_s", "quality_mean", "hit_rate",
                    "miss_rate", "recompute_rate", "bytes_moved", "bytes_loaded", "bytes_admitted", "requests"):
            assert key in run, key
        assert set(run["hit_rate"]) == {"cpu", "disk"}
        assert 0.0 <= run["quality_mean"] <= 1.0
        # every served copy is a hit on some tier; a fixed codec serves only that codec
        assert sum(run["served_codecs"].values()) <= sum(run["hit_rate"].values()) + 1e-3
    by_policy = {r["policy"]: r for r in parsed["runs"]}
    assert set(by_policy["fixed:int8"]["served_codecs"]) == {"int8"}
    assert by_policy["prefill"]["served_codecs"] == {}
    assert parsed["trace"]["requests"] == 800
    assert parsed["catalog"]["contexts"] == 80
    assert set(parsed["comparisons"]) >= {"paper", "vs_fixed", "vs_lru", "vs_prefill", "front"}
    assert parsed["comparisons"]["vs_prefill"]["ratio"] > 1.0  # reuse beats recomputing everything


def test_table_output(scenario_file, profiles_file):
    _, text = bench(scenario_file, profiles_file)
    for name in ("prefill", "lru", "fixed:knorm@0.5", "evicpress@0.5", "placement-only", "TTFT mean", "hit cpu", "paper"):
        assert name in text, name


def test_jsonl_and_csv_outputs(scenario_file, profiles_file):
    _, text = bench(scenario_file, profiles_file, output="jsonl", policies=["lru", "prefill"])
    rows = [json.loads(line) for line in text.strip().splitlines()]
    assert [r["policy"] for r in rows] == ["lru", "prefill"]
    _, text = bench(scenario_file, profiles_file, output="csv", policies=["lru", "prefill"])
    lines = text.strip().splitlines()
    assert lines[0].startswith("policy,") and "ttft_mean_s" in lines[0] and "hit_rate_cpu" in lines[0]
    assert len(lines) == 3


def test_plot_is_a_png(tmp_path, scenario_file, profiles_file):
    plot = tmp_path / "out" / "ttft.png"
    doc, _ = bench(scenario_file, profiles_file, plot=plot)
    data = plot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert str(plot) in doc["notes"][-1]


def test_plot_needs_a_png_name(tmp_path, scenario_file, profiles_file):
    with pytest.raises(UsageError, match="PNG"):
        bench(scenario_file, profiles_file, plot=tmp_path / "x.svg", policies=["lru"])


def test_same_seed_same_requests():
    a = zipf_trace(500, 2000, qps=2.0, zipf=1.1, seed=9)
    b = zipf_trace(500, 2000, qps=2.0, zipf=1.1, seed=9)
    c = zipf_trace(500, 2000, qps=2.0, zipf=1.1, seed=10)
    assert np.array_equal(a.context, b.context) and np.array_equal(a.at_s, b.at_s)
    assert np.array_equal(a.query_tokens, b.query_tokens)
    assert not np.array_equal(a.context, c.context)


def test_same_seed_same_result(scenario_file, profiles_file):
    one, _ = bench(scenario_file, profiles_file, policies=["evicpress"], output="json")
    two, _ = bench(scenario_file, profiles_file, policies=["evicpress"], output="json")
    keys = ("ttft_mean_s", "quality_mean", "hit_rate", "bytes_moved")
    assert [one["runs"][0][k] for k in keys] == [two["runs"][0][k] for k in keys]


def test_zipf_skew_and_drift():
    skewed = zipf_trace(1000, 20000, qps=1.0, zipf=1.2, seed=0)
    flat = zipf_trace(1000, 20000, qps=1.0, zipf=0.6, seed=0)
    top = lambda t: np.bincount(t.context, minlength=1000).max()  # noqa: E731
    assert top(skewed) > 2 * top(flat)
    still = zipf_trace(1000, 20000, qps=1.0, zipf=1.2, seed=0)
    moving = zipf_trace(1000, 20000, qps=1.0, zipf=1.2, seed=0, drift=1.0)
    first, last = slice(0, 2000), slice(18000, 20000)
    hot = lambda t, s: np.bincount(t.context[s], minlength=1000).argmax()  # noqa: E731
    assert hot(still, first) == hot(still, last)
    assert hot(moving, first) != hot(moving, last)
    assert np.all(np.diff(skewed.at_s) > 0)
    assert skewed.at_s[-1] == pytest.approx(20000, rel=0.05)  # 1 qps


def test_csv_trace(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("timestamp,context\n100.5,ctx3\n100.0,1\n101,\n")
    t = csv_trace(path, 5, zipf=1.0, seed=0, context_ids=[f"ctx{i}" for i in range(5)])
    assert t.at_s.tolist() == [0.0, 0.5, 1.0]
    assert t.context[:2].tolist() == [1, 3]
    bad = tmp_path / "bad.csv"
    bad.write_text("timestamp,context\n1,nope\n")
    with pytest.raises(UsageError, match="nope"):
        csv_trace(bad, 5, zipf=1.0, seed=0)


def test_bad_options(scenario_file, profiles_file):
    with pytest.raises(UsageError, match="output"):
        bench(scenario_file, profiles_file, output="yaml")
    with pytest.raises(UnknownNameError, match="scenario"):
        bench("mars", profiles_file)
    with pytest.raises(UsageError, match="unknown bench option"):
        bench(scenario_file, profiles_file, colour="red")
    with pytest.raises(UsageError, match="measure_profiles"):
        bench(scenario_file, Path("/nonexistent/profiles.json"))


def test_h200_design_scenario(tmp_path):
    """Without a measured file, h200 is DESIGN §8's figures (a documented data file)."""
    from evicctl.replay.scenario import DATA_DIR

    (tmp_path / "h200_design_costs.json").write_text((DATA_DIR / "h200_design_costs.json").read_text())
    s = load_scenario("h200", data_dir=tmp_path)
    assert [t.name for t in s.tiers] == ["gpu", "cpu", "disk"]
    assert "h200_design_costs.json" in s.source
    cost = s.cost_model()
    # DESIGN §8: Llama-3.1-8B-shaped prefill 1k 0.034 s, 32k 1.37 s
    assert cost.prefill_s(1024) == pytest.approx(0.034, rel=0.1)
    assert cost.prefill_s(32768) == pytest.approx(1.37, rel=0.05)
    assert s.model.bytes_per_token == 128 << 10


def test_h200_prefers_the_measured_file(tmp_path):
    from evicctl.replay.scenario import DATA_DIR

    (tmp_path / "h200_design_costs.json").write_text((DATA_DIR / "h200_design_costs.json").read_text())
    measured = {"source": "benchmarks/gpu_bench.py", "prefill_samples": [[1024, 0, 0.05], [8192, 0, 0.3], [32768, 0, 1.5]],
                "prefill_coef": [0.03, 2e-5, 6e-10], "tiers": [{"name": "gpu", "read_bps": 2e12, "share": 100},
                {"name": "cpu", "read_bps": 5e10, "share": 80}, {"name": "disk", "read_bps": 2e9, "share": 800}]}
    (tmp_path / "h200_costs.json").write_text(json.dumps(measured))
    s = load_scenario("h200", data_dir=tmp_path)
    assert "h200_costs.json" in s.source
    assert s.tiers[2].read_bps == 2e9
    cost = s.cost_model()  # the measured fit, as is
    assert cost.prefill_s(8192) == pytest.approx(0.03 + 2e-5 * 8192 + 6e-10 * 8192**2)
    assert s.context_tokens["distribution"] == "loguniform"  # the workload shape stays the design's


def test_h200_refuses_a_malformed_measured_file(tmp_path):
    """A measured file it cannot read is an error, not a silent switch to the design figures."""
    from evicctl.replay.scenario import DATA_DIR

    (tmp_path / "h200_design_costs.json").write_text((DATA_DIR / "h200_design_costs.json").read_text())
    (tmp_path / "h200_costs.json").write_text(json.dumps({"tiers": "not a list"}))
    with pytest.raises(UsageError, match="h200_costs.json is malformed"):
        load_scenario("h200", data_dir=tmp_path)
    (tmp_path / "h200_costs.json").write_text("{not json")
    with pytest.raises(UsageError, match="malformed"):
        load_scenario("h200", data_dir=tmp_path)


def test_pareto_and_interpolation():
    front = pareto([(0.9, 1.0), (0.95, 2.0), (0.93, 3.0), (0.99, 4.0)])
    assert front == [(0.9, 1.0), (0.95, 2.0), (0.99, 4.0)]
    assert ttft_at_quality(front, 0.97) == pytest.approx(3.0)
    assert ttft_at_quality(front, 0.5) == 1.0  # our worst point is already better
    assert ttft_at_quality(front, 0.995) is None  # beyond our best quality: no match


def test_sweep_reports_every_point(tmp_path, scenario_file, profiles_file):
    out = io.StringIO()
    plot = tmp_path / "sweep.png"
    doc = run_bench(scenario=str(scenario_file), profiles=profiles_file, sweep="capacity", contexts=60,
                    requests=400, policies=["lru", "prefill", "fixed:int8", "evicpress", "evicpress@50"],
                    progress=False, console=Console(file=out, width=200), plot=plot)
    assert [p["value"] for p in doc["points"]] == [0.05, 0.1, 0.3, 1.0, 3.0, 12.0]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and str(plot) in doc["notes"][-1]  # the sweep's own figure
    everything_fits = doc["summary"][-1]
    assert everything_fits["vs_lru"] == pytest.approx(1.0, abs=0.05)  # nothing to win when it all fits
    assert "robustness: capacity" in out.getvalue()
    with pytest.raises(UnknownNameError, match="zipf"):
        run_bench(scenario=str(scenario_file), profiles=profiles_file, sweep="moon", progress=False,
                  console=Console(file=io.StringIO()))


def test_importing_the_package_is_light():
    import subprocess
    import sys

    code = "import sys, evicctl.replay; print(sorted(m for m in ('torch', 'matplotlib', 'rich', 'scipy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_parallel_replay_matches_serial(scenario_file, profiles_file):
    serial, _ = bench(scenario_file, profiles_file, policies=["lru", "evicpress", "fixed:int4"], jobs=1, output="json")
    parallel, _ = bench(scenario_file, profiles_file, policies=["lru", "evicpress", "fixed:int4"], jobs=2, output="json")
    strip = lambda runs: [{k: v for k, v in r.items() if k not in ("wall_s", "plan_s")} for r in runs]  # noqa: E731
    assert strip(serial["runs"]) == strip(parallel["runs"])


def test_json_on_stdout_is_clean_with_the_milp(scenario_file, profiles_file):
    """`python -m evicctl.replay -o json` prints the document alone, even while HiGHS (which
    writes to file descriptor 1 directly) solves the exact policy's re-plans."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "evicctl.replay", "--scenario", str(scenario_file), "--profiles", str(profiles_file),
           "--policy", "exact", "--policy", "lru", "--contexts", "30", "--requests", "300", "-o", "json"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    doc = json.loads(done.stdout)
    assert [r["policy"] for r in doc["runs"]] == ["exact", "lru"]
    assert doc["runs"][0]["exact_problems"] > 0
