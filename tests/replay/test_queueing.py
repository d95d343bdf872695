"""The queueing model: waiting on the links and the compute device, and max QPS within a p99 target."""

from __future__ import annotations

import numpy as np
import pytest

from evicctl.replay.catalog import build_catalog
from evicctl.replay.policies import make_policy
from evicctl.replay.queueing import (
    ServiceTimes,
    max_qps,
    p99_at,
    queued_ttft,
    service_times,
    throughput,
)
from evicctl.replay.replay import replay
from evicctl.replay.trace import Trace, zipf_trace


def services(link, load_s, compute_s, overhead_s=0.0) -> ServiceTimes:
    return ServiceTimes(np.array(link), np.array(load_s, dtype=float), np.array(compute_s, dtype=float), overhead_s)


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
    a = queueing_agreement(catalog, drawn, predicted, drawn.at_s, start, predicted.ttft_s)
    assert a["queued_ratio"] == pytest.approx(1.0) and a["waited_share_live"] > 0
