"""Policies on small traces: what each may and may not do, and the books the simulator keeps."""

from __future__ import annotations

import math

import numpy as np
import pytest
from shared_workload import N, R  # the catalog and trace fixtures' size

from evicctl.errors import UnknownNameError, UsageError
from evicctl.manager.placer.place import DROPPED
from evicctl.replay.catalog import build_catalog
from evicctl.replay.policies import FIXED_SWEEP, Lru, PlacerPolicy, make_policy
from evicctl.replay.replay import MISS, RECOMPUTE, Simulator, replay
from evicctl.replay.trace import zipf_trace


def run(spec, catalog, trace, **kw):
    return replay(make_policy(spec, alpha=catalog.scenario.alpha), catalog, trace, warmup=0.0, **kw)


def test_prefill_never_hits(catalog, trace):
    r = run("prefill", catalog, trace)
    assert (r.served_tier == MISS).all()
    assert r.quality.min() == 1.0
    assert r.bytes_admitted == 0 and r.bytes_loaded == 0
    assert np.allclose(r.ttft_s, catalog.miss_ttft(trace.context, trace.query_tokens))


def test_lru_never_compresses_and_hits_under_pressure(catalog, trace):
    r = run("lru", catalog, trace)
    hits = r.served_tier >= 0
    none = catalog.codecs.index("none")
    assert hits.mean() > 0.3  # reuse happens...
    assert (r.served_tier == MISS).mean() > 0.05  # ...and so does eviction: the trace is under pressure
    assert (r.served_codec[hits] == none).all()
    assert (r.quality == 1.0).all()


@pytest.mark.parametrize("codec", ["knorm@0.5", "int4", "snapkv@0.25"])
def test_fixed_uses_one_codec(catalog, trace, codec):
    r = run(f"fixed:{codec}", catalog, trace)
    hits = r.served_tier >= 0
    assert hits.any()
    assert set(r.served_codec[hits].tolist()) == {catalog.codec_index(codec)}
    assert r.family == "fixed" and r.codec == codec


def test_evicpress_beats_lru_on_utility_under_pressure(scenario, profiles, trace):
    """Realised utility per request, alpha * quality - TTFT, scored with the truth (what the
    placer optimises, judged on what requests got)."""
    catalog = build_catalog(scenario, profiles, N, seed=1)
    alpha = scenario.alpha

    def realised(spec):
        r = run(spec, catalog, trace)
        return float((alpha * r.quality - r.ttft_s).mean())

    assert realised("evicpress") >= realised("lru")
    assert realised("evicpress") >= realised("prefill")


def test_compression_helps_when_capacity_is_short(catalog, trace):
    ours, lru = run("evicpress", catalog, trace), run("lru", catalog, trace)
    assert ours.ttft_s.mean() < lru.ttft_s.mean()
    assert (ours.served_tier == MISS).mean() < (lru.served_tier == MISS).mean()


def test_placement_only_keeps_every_copy_whole(catalog, trace):
    r = run("placement-only", catalog, trace)
    hits = r.served_tier >= 0
    assert hits.any() and (r.served_codec[hits] == catalog.codec_index("none")).all()


def test_no_policy_overfills_a_tier_and_the_books_balance(catalog, trace):
    for spec in ("lru", "lru-plain", "fixed:int8", "evicpress", "placement-only", "evicpress@0.1"):
        policy = make_policy(spec, alpha=2.0)
        replay(policy, catalog, trace)
        sim: Simulator = policy.sim  # the state it left
        stored = sim.tier >= 0
        for t in range(len(catalog.tiers)):
            on_t = stored & (sim.tier == t)
            assert sim.used[t] == int(catalog.stored_bytes[sim.codec[on_t], np.flatnonzero(on_t)].sum()), spec
            assert sim.used[t] <= sim.capacity[t], spec
        assert (sim.codec[~stored] == -1).all()


def test_sane_policies_recompute_instead_of_slow_loads(slow_disk_scenario, profiles):
    catalog = build_catalog(slow_disk_scenario, profiles, N, seed=1)
    trace = zipf_trace(N, R, qps=1.0, zipf=0.8, seed=3, query_tokens=slow_disk_scenario.query_tokens)
    disk = catalog.tiers.index("disk")
    miss = catalog.miss_ttft(trace.context, trace.query_tokens)
    for spec in ("lru", "fixed:int8", "evicpress"):
        r = run(spec, catalog, trace)
        assert (r.ttft_s <= miss + 1e-12).all(), spec
        if spec != "evicpress":  # a whole or int8 copy loads from this disk slower than a prefill
            assert not (r.served_tier == disk).any(), spec
    plain = run("lru-plain", catalog, trace)
    slow = plain.served_tier == disk
    assert slow.any() and (plain.ttft_s[slow] > miss[slow]).all()  # the strawman does load slowly


def test_recompute_marks_hits_slower_than_a_prefill(slow_disk_scenario, profiles):
    """lru-plain stores on the slow disk; a sane replay of the same decisions recomputes."""
    catalog = build_catalog(slow_disk_scenario, profiles, N, seed=1)
    trace = zipf_trace(N, R, qps=1.0, zipf=0.8, seed=3, query_tokens=slow_disk_scenario.query_tokens)
    policy = Lru(sane=False)
    policy.sane = True  # lru-plain's placements, served sanely
    r = replay(policy, catalog, trace)
    assert (r.served_tier == RECOMPUTE).any()


def test_exact_on_a_small_instance(scenario, profiles):
    catalog = build_catalog(scenario, profiles, 24, seed=2)
    trace = zipf_trace(24, 400, qps=1.0, zipf=1.0, seed=2, query_tokens=scenario.query_tokens)
    r = run("exact", catalog, trace)
    assert r.extra["exact_problems"] > 0
    assert r.extra["exact_gap_mean"] >= -1e-3  # the optimum is never worse than the greedy
    assert r.family == "exact"


def test_policy_names():
    assert make_policy("evicpress@0.5", alpha=2.0).alpha == 0.5
    assert make_policy("evicpress", alpha=3.0).alpha == 3.0
    assert make_policy("fixed:knorm@0.50", alpha=2.0).name == "fixed:knorm@0.5"
    assert isinstance(make_policy("placement-only", alpha=2.0), PlacerPolicy)
    with pytest.raises(UnknownNameError, match="lru"):
        make_policy("mru", alpha=2.0)
    with pytest.raises(UsageError):
        make_policy("evicpress@fast", alpha=2.0)
    with pytest.raises(UsageError):
        make_policy("fixed:zip@0.5", alpha=2.0)
    assert len(FIXED_SWEEP) == 11


def test_a_codec_without_a_profile_is_refused(catalog, trace):
    with pytest.raises(UnknownNameError, match="measured profile"):
        run("fixed:knorm@0.3", catalog, trace)


def test_freq_matches_the_managers_decayed_rate(catalog):
    """The replay's access rate is the manager's estimator (evicctl.manager.freq)."""
    from evicctl.manager.freq import DecayedRate

    policy = PlacerPolicy("evicpress", alpha=2.0, half_life_s=60.0)
    policy.setup(Simulator(catalog))
    reference = DecayedRate(60.0)
    rng = np.random.default_rng(0)
    now = 0.0
    for _ in range(300):
        now += float(rng.exponential(3.0))
        i = int(rng.integers(0, 10))
        policy.touch(i, now)
        reference.record(str(catalog.context_ids[i]), now)
    rows = np.arange(10)
    expected = reference.rates([str(c) for c in catalog.context_ids[rows]], now + 7.0)
    assert np.allclose(policy.rates(rows, now + 7.0), expected)


def test_relieving_tier_by_tier_is_the_full_plan(catalog, trace):
    """The replay relieves one tier at a time with the placer; a plan over every stored
    context makes the same choices."""
    from evicctl.manager.placer.place import place

    policy = make_policy("evicpress", alpha=2.0)
    sim = Simulator(catalog)
    policy.setup(sim)
    for k in range(600):  # fill the tiers without pressure re-plans
        i, now = int(trace.context[k]), float(trace.at_s[k])
        policy.touch(i, now)
        if sim.tier[i] < 0:
            t, c = policy.best_tier[i], policy.best_codec[i]
            policy.profiled[i] = True
            if t >= 0 and sim.fits(i, t, c):
                sim.place(i, t, c)
    new = next(i for i in range(catalog.n_contexts) if sim.tier[i] == DROPPED and policy.best_tier[i] == 0)
    policy.profiled[new] = True
    rows = np.append(sim.stored_rows(), new)
    t_now = float(trace.at_s[600])
    # Shrink the top tier so that admitting `new` overflows it.
    sim.capacity[0] = sim.used[0]
    full = place(policy._problem(rows, t_now, np.array(sim.capacity, dtype=float) * (1 - policy.headroom), fresh=np.array([new])))
    policy.spill_headroom = policy.headroom
    policy._relieve(0, t_now, new=new)
    want_codec = np.where(full.codec_index >= 0, policy.cidx[np.maximum(full.codec_index, 0)], -1)
    assert (sim.tier[rows] == full.tier_index).all()
    assert (sim.codec[rows] == want_codec).all()


def test_summary_statistics(catalog, trace):
    r = run("lru", catalog, trace)
    s = r.summary()
    assert s["requests"] == R
    assert math.isclose(sum(s["hit_rate"].values()) + s["miss_rate"] + s["recompute_rate"], 1.0)
    assert s["ttft_p50_s"] <= s["ttft_p99_s"]
    assert s["ttft_mean_s"] == pytest.approx(float(r.ttft_s.mean()))


def test_reprofiling_corrects_an_overestimate(scenario, profiles, trace):
    """Noise makes some estimates far too high; served hits reveal them and the profile is
    re-measured (the estimate becomes the truth), as the profiler does online."""
    catalog = build_catalog(scenario, profiles, N, seed=1, noise_sd=0.4)
    policy = make_policy("evicpress@0.05", alpha=2.0)  # low alpha: compresses, so lossy hits happen
    replay(policy, catalog, trace)
    assert policy.reprofiles > 0
    corrected = sum(
        1 for i in range(N) for c in range(len(catalog.codecs))
        if catalog.truth[c, i] < catalog.estimate[c, i] - 0.3 and policy.quality[policy.local[c], i] == catalog.truth[c, i]
    )
    assert corrected == policy.reprofiles
