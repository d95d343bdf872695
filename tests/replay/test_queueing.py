"""The queueing model: waiting on the links and the compute device, the stores of admitted
misses, and max QPS within a p99 target."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from shared_workload import SMALL

from evicctl.replay.catalog import build_catalog
from evicctl.replay.policies import make_policy
from evicctl.replay.queueing import (
    ENCODE_BPS,
    KVZIP_PASS_PREFILLS,
    ServiceTimes,
    StoreCosts,
    max_qps,
    p99_at,
    queued_ttft,
    scoring_prefills,
    service_times,
    store_costs,
    store_times,
    throughput,
)
from evicctl.replay.replay import MISS, replay
from evicctl.replay.scenario import scenario_from_dict
from evicctl.replay.trace import Trace, zipf_trace


def services(link, load_s, compute_s, overhead_s=0.0, *, store_s=None, write_link=None, write_s=None) -> ServiceTimes:
    def arr(x, dtype=float):
        return None if x is None else np.array(x, dtype=dtype)

    return ServiceTimes(np.array(link), arr(load_s), arr(compute_s), overhead_s,
                        store_s=arr(store_s), write_link=arr(write_link, np.int64), write_s=arr(write_s))


def test_one_at_a_time_requests_wait_for_the_ones_ahead():
    s = services([-1, -1, -1], [0, 0, 0], [1.0, 1.0, 1.0])
    assert queued_ttft(np.array([0.0, 0.0, 5.0]), s).tolist() == pytest.approx([1.0, 2.0, 1.0])


def test_a_load_overlaps_the_compute_of_others_and_waits_on_its_own_link():
    # request 0 computes for 1 s; request 1 loads 0.5 s from tier 1 meanwhile, then computes
    s = services([-1, 1, 1], [0, 0.5, 0.5], [1.0, 0.1, 0.1])
    ttft = queued_ttft(np.array([0.0, 0.0, 0.0]), s)
    assert ttft[0] == pytest.approx(1.0)
    assert ttft[1] == pytest.approx(1.1)  # its load hid behind request 0's compute
    assert ttft[2] == pytest.approx(1.2)  # second on the link (ready at 1.0), then after request 1


def test_batching_pays_the_per_call_overhead_once():
    s = services([-1] * 4, [0] * 4, [0.5] * 4, overhead_s=0.4)
    one = queued_ttft(np.zeros(4), s, max_batch=1)
    four = queued_ttft(np.zeros(4), s, max_batch=4)
    assert one.max() == pytest.approx(2.0) and four.tolist() == pytest.approx([0.8] * 4)


def test_unloaded_ttft_is_the_replays_and_max_qps_orders_policies(scenario, profiles):
    catalog = build_catalog(scenario, profiles, 120, seed=1)
    drawn = zipf_trace(120, 1500, qps=1.0, zipf=1.0, seed=3, query_tokens=scenario.query_tokens)
    trace = Trace(np.arange(1500) * 100.0, drawn.context, drawn.query_tokens)  # 100 s apart: nobody waits
    runs = {s: replay(make_policy(s, alpha=2.0), catalog, trace, warmup=0.1) for s in ("prefill", "lru", "ideal")}
    for r in runs.values():  # unloaded, TTFT with queueing is the replay's
        svc = service_times(catalog, trace, r)
        assert np.allclose(queued_ttft(trace.at_s, svc), r.ttft_s, rtol=1e-6, atol=1e-9)
    svc = service_times(catalog, trace, runs["lru"])
    assert p99_at(1.0, trace, svc, 150) <= p99_at(4.0, trace, svc, 150)
    slo = 4.0
    qps = {s: throughput(r, catalog, trace, slo)["max_qps"] for s, r in runs.items()}
    assert 0 < qps["prefill"] < qps["lru"] <= qps["ideal"]
    # a p99 target under the fastest unloaded requests cannot be met at any rate
    assert max_qps(trace, svc, 1e-6, 150) == 0.0


def test_max_qps_of_a_single_server_is_near_its_capacity():
    """Constant 1 s service, Poisson arrivals: p99 within 20 s needs utilisation well under 1."""
    rng = np.random.default_rng(0)
    n = 20_000
    trace = Trace(np.cumsum(rng.exponential(1.0, n)), np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64))
    q = max_qps(trace, services([-1] * n, [0] * n, [1.0] * n), 20.0, 1000)
    assert 0.7 < q < 1.0


def test_live_open_loop_agreement_compares_waited_plus_served(scenario, profiles):
    """A live run that behaved exactly as modelled agrees with ratio 1."""
    from evicctl.replay.live import queueing_agreement

    catalog = build_catalog(scenario, profiles, 10, seed=1)
    drawn = zipf_trace(10, 40, qps=1.0, zipf=1.0, seed=2, query_tokens=scenario.query_tokens)
    predicted = replay(make_policy("lru", alpha=2.0), catalog, drawn, warmup=0.0)
    model = queued_ttft(drawn.at_s, service_times(catalog, drawn, predicted))
    start = drawn.at_s + model - predicted.ttft_s  # waited, then served for its own TTFT
    engine_store_s = np.where(predicted.served_tier == MISS, 0.25, 0.0)  # what the engine timed per miss
    a = queueing_agreement(catalog, drawn, predicted, drawn.at_s, start, predicted.ttft_s, live_store_s=engine_store_s)
    assert a["queued_ratio"] == pytest.approx(1.0) and a["waited_share_live"] > 0
    assert a["store_s_per_miss_replay"] > 0 and a["store_s_per_miss_live"] == pytest.approx(0.25)
    assert a["queued_ttft_mean_replay_s"] > a["queued_ttft_mean_replay_no_store_s"]  # someone waited for a store


# ------------------------------------------------------------ stores after the first token


@pytest.mark.parametrize(("capacity", "tier"), [(4.0, 0), (0.2, 1)])
def test_a_request_arriving_during_a_store_waits_exactly_the_store_time(scenario, profiles, capacity, tier):
    """Kept on the top tier, the compute device encodes and writes it; kept on the disk, it
    only encodes it (the write is the disk link's)."""
    catalog = build_catalog(scenario.with_capacity(capacity), profiles, 4, seed=1)
    spaced = Trace(np.array([0.0, 100.0]), np.array([0, 1]), np.array([20, 20]))
    served = replay(make_policy("fixed:int4", alpha=2.0), catalog, spaced, warmup=0.0)
    int4, none = catalog.codec_index("int4"), catalog.codec_index("none")
    assert served.served_tier.tolist() == [MISS, MISS]
    assert (served.admitted_tier[0], served.admitted_codec[0]) == (tier, int4)
    encode_s = catalog.stored_bytes[none, 0] / ENCODE_BPS["cpu"]["quant"]  # the raw KV at int4's CPU figure
    write_s = catalog.stored_bytes[int4, 0] / catalog.read_bps[0] if tier == 0 else 0.0
    arrival = np.array([0.0, served.ttft_s[0]])  # the second arrives as the first's first token is out
    charged = queued_ttft(arrival, service_times(catalog, spaced, served))
    bare = queued_ttft(arrival, service_times(catalog, spaced, served, store=False))
    assert encode_s > 0.05
    assert charged[0] == pytest.approx(served.ttft_s[0])  # its own first token is out before the store
    assert bare.tolist() == pytest.approx(served.ttft_s.tolist())  # without the store nobody waits
    assert charged[1] - served.ttft_s[1] == pytest.approx(encode_s + write_s)


def test_only_admitted_misses_charge_a_store(catalog, trace):
    lru = replay(make_policy("lru", alpha=2.0), catalog, trace, warmup=0.1)
    store_s, write_link, write_s = store_times(catalog, trace, lru, store_costs(catalog))
    hits, kept = lru.served_tier >= 0, lru.admitted_tier >= 0
    assert hits.any() and not store_s[hits].any() and not write_s[hits].any()
    assert kept.any() and (lru.served_tier[kept] == MISS).all() and (store_s[kept] > 0).all()
    assert not store_s[~kept].any() and (write_link[~kept] == -1).all()
    nothing_kept = replay(make_policy("prefill", alpha=2.0), catalog, trace, warmup=0.1)
    assert (nothing_kept.served_tier == MISS).all()
    assert not any(x.any() for x in store_times(catalog, trace, nothing_kept, store_costs(catalog))[::2])


def test_a_run_that_may_pick_kvzip_pays_its_pass_per_stored_context(catalog, trace):
    kvzip = replay(make_policy("fixed:kvzip@0.25+int4", alpha=2.0), catalog, trace, warmup=0.1)
    int4 = replay(make_policy("fixed:int4", alpha=2.0), catalog, trace, warmup=0.1)
    ours = replay(make_policy("evicpress", alpha=2.0), catalog, trace, warmup=0.1)
    assert (scoring_prefills(kvzip), scoring_prefills(int4)) == (KVZIP_PASS_PREFILLS, 0.0)
    assert scoring_prefills(ours) == KVZIP_PASS_PREFILLS  # the menu holds kvzip codecs
    no_kvzip = replay(make_policy("evicpress-nokvzip@0.5", alpha=2.0), catalog, trace, warmup=0.1)
    assert scoring_prefills(no_kvzip) == 0.0 and no_kvzip.alpha == 0.5
    served = {catalog.codecs[k] for k in np.unique(no_kvzip.served_codec[no_kvzip.served_codec >= 0])}
    assert served and not any(c.startswith("kvzip@") for c in served)
    kept = np.flatnonzero(kvzip.admitted_tier >= 0)
    with_pass = store_times(catalog, trace, kvzip, store_costs(catalog))[0][kept]
    without = store_times(catalog, trace, kvzip, store_costs(catalog, kvzip_pass=False))[0][kept]
    assert with_pass - without == pytest.approx(KVZIP_PASS_PREFILLS * catalog.miss_ttft_s[trace.context[kept]])


def test_a_lower_tier_admission_is_written_over_its_link_at_the_write_bandwidth(catalog, trace):
    result = replay(make_policy("lru", alpha=2.0), catalog, trace, warmup=0.1)
    k = int(np.flatnonzero(result.served_tier == MISS)[0])
    int8, none = catalog.codec_index("int8"), catalog.codec_index("none")
    admitted_tier = np.full(len(trace), -2)
    admitted_codec = np.full(len(trace), -1)
    admitted_tier[k], admitted_codec[k] = 1, int8
    on_disk = replace(result, admitted_tier=admitted_tier, admitted_codec=admitted_codec)
    costs = store_costs(catalog, {"disk": 2e8})  # as the Manager probed it; the cpu tier keeps its read figure
    assert costs.write_bps == (catalog.read_bps[0], 2e8)
    store_s, write_link, write_s = store_times(catalog, trace, on_disk, costs)
    ctx = trace.context[k]
    assert store_s[k] == pytest.approx(catalog.stored_bytes[none, ctx] / ENCODE_BPS["cpu"]["quant"])  # encode only
    assert (write_link[k], write_s[k]) == (1, pytest.approx(catalog.stored_bytes[int8, ctx] / 2e8))
    # an engine that stores synchronously holds the compute device for the write too
    sync = store_times(catalog, trace, on_disk, store_costs(catalog, {"disk": 2e8}, synchronous=True))
    assert sync[0][k] == pytest.approx(store_s[k] + write_s[k]) and sync[1][k] == -1 and sync[2][k] == 0
    # a width measured on its own wins over its family's figure
    by_width = StoreCosts({**ENCODE_BPS["cpu"], "quant:int8": 1e9}, costs.write_bps)
    assert store_times(catalog, trace, on_disk, by_width)[0][k] == pytest.approx(catalog.stored_bytes[none, ctx] / 1e9)


def test_a_gpu_catalog_encodes_at_the_gpus_figures(profiles):
    d = json.loads(json.dumps(SMALL))
    d["tiers"] = [{"name": "gpu", "read_bps": 2e12, "share": 10}, *d["tiers"]]
    gpu = build_catalog(scenario_from_dict(d), profiles, 4, seed=1)
    assert store_costs(gpu).encode_bps == ENCODE_BPS["gpu"]
    assert ENCODE_BPS["gpu"]["quant"] > 100 * ENCODE_BPS["cpu"]["quant"]


def test_a_write_occupies_its_link_and_not_the_compute():
    # request 0 computes 1 s, encodes 0.2 s (1.0-1.2), then writes 0.5 s on link 1 (1.2-1.7)
    store = {"store_s": [0.2, 0, 0], "write_link": [1, -1, -1], "write_s": [0.5, 0, 0]}
    s = services([-1, 1, -1], [0, 0.1, 0], [1.0, 0.1, 0.1], **store)
    ttft = queued_ttft(np.array([0.0, 1.3, 1.3]), s)
    assert ttft[0] == pytest.approx(1.0)
    assert ttft[1] == pytest.approx(1.7 + 0.1 + 0.1 - 1.3)  # its load waits for the write
    assert ttft[2] == pytest.approx(0.1)  # nothing to load: computes once the encode is done
    # a load that joined the link before the write goes first; the write then delays the next
    s = services([-1, 1, 1], [0, 0.3, 0.1], [1.0, 0.1, 0.1], **store)
    ttft = queued_ttft(np.array([0.0, 1.1, 1.5]), s)
    assert ttft[1] == pytest.approx(1.4 + 0.1 - 1.1)  # load 1.1-1.4, compute free since 1.2
    assert ttft[2] == pytest.approx(1.9 + 0.1 + 0.1 - 1.5)  # behind the write (1.4-1.9)


def test_a_batch_encodes_its_members_stores_before_the_next_batch():
    s = services([-1] * 3, [0] * 3, [0.5] * 3, overhead_s=0.4, store_s=[0.2, 0.2, 0.0])
    ttft = queued_ttft(np.array([0.0, 0.0, 0.7]), s, max_batch=4)
    # batch of two ends at 0.4 + 0.1 + 0.1 = 0.6; encodes 0.6-1.0; the third computes 1.0-1.5
    assert ttft.tolist() == pytest.approx([0.6, 0.6, 0.8])


@pytest.mark.parametrize("max_batch", [1, 4])
def test_the_links_first_shortcut_serves_as_the_full_simulation(max_batch):
    """Without writes on a link the links are served before the compute; a zero-second write on
    a link makes the full simulation run instead, which must give the same TTFTs."""
    rng = np.random.default_rng(7)
    n = 2000
    arrival = np.round(np.cumsum(rng.exponential(0.6, n)), 1)  # rounded: ties in arrival and ready times
    link = rng.integers(-1, 3, n)
    load_s = np.where(link >= 0, rng.exponential(0.3, n), 0.0)
    store_s = np.where(rng.random(n) < 0.3, rng.exponential(0.2, n), 0.0)
    no_writes = services(link, load_s, rng.exponential(0.5, n), 0.1, store_s=store_s)
    zero_write = replace(no_writes, write_link=np.where(np.arange(n) % 7 == 0, 1, -1))
    shortcut = queued_ttft(arrival, no_writes, max_batch=max_batch)
    assert (shortcut > load_s + no_writes.compute_s + 1e-9).mean() > 0.2  # loaded: many requests waited
    assert queued_ttft(arrival, zero_write, max_batch=max_batch) == pytest.approx(shortcut, abs=1e-9)
