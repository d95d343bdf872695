"""Live mode against the replay: the real model, engine and Manager serve a small workload;
the replay of the same requests must predict its mean TTFT within 20% (issue 7)."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from evicctl.errors import UsageError
from evicctl.replay import run_bench
from evicctl.replay.profiles import DEFAULT_PROFILES


@pytest.mark.e2e
@pytest.mark.timing
def test_replay_predicts_live_ttft_within_20_percent():
    """The replay, with the prefill costs the engine timed in the same run, makes the same
    decisions as the Manager and predicts the mean TTFT within 20%. (Costs timed apart, before
    the run, drift with the shared machine's load: `evicctl bench --live` reports that too.)"""
    out = io.StringIO()
    doc = run_bench(live=True, contexts=4, requests=16, capacity=0.4, seed=1, live_calibrate=False,
                    progress=False, output="json", console=Console(file=out))
    agreement = doc["agreement"]["evicpress (live), costs observed"]
    live, replay = doc["runs"]
    assert live["requests"] == replay["requests"] == 16
    assert live["miss_rate"] > 0 and sum(live["hit_rate"].values()) > 0  # both kinds were served
    assert agreement["same_outcome"] >= 0.8, agreement
    assert agreement["ratio"] == pytest.approx(1.0, abs=0.2), agreement


def test_live_refuses_policies_the_manager_does_not_run():
    assert DEFAULT_PROFILES.name == "smollm2_profiles.json"
    with pytest.raises(UsageError, match="live mode"):
        run_bench(live=True, policies=["lru"], progress=False, console=Console(file=io.StringIO()))
