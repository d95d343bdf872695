"""Queueing: TTFT with waiting, and the most requests per second a policy serves within a
p99 TTFT target (the paper's throughput claim: 2.0-3.6x more QPS at the same TTFT).

The replay's TTFT is a request's own service time. Here the same decisions (which tier and
codec served each request) meet two kinds of servers:
- one **link per lower tier** (PCIe from pinned CPU memory, the disk): a load waits for the
  loads ahead of it on the same link (FIFO at the tier's full read bandwidth: the same
  throughput as sharing it, better latency for the first);
- the **compute device** (the GPU; the CPU in cpu-local), which decodes a compressed copy,
  reads a top-tier copy, prefills the question or the whole context. It takes ready
  requests in the order they became ready, one at a time or up to `max_batch` together; a
  batch pays the per-call overhead (the cost model's intercept) once and ends when all its
  members end.
A request's TTFT = the end of its compute - its arrival; a load overlaps the compute of
others (the engine prefetches), so a pipeline of hits keeps both busy.

Throughput: arrivals are the trace's, time-scaled to a given rate; decisions are the
replay's at the trace's own rate (placement does not depend on load: LRU-like policies
see only the order, and the placer's rates all scale alike), so one replay per policy
gives its whole TTFT-vs-QPS curve. `max_qps` bisects for the highest rate whose p99 TTFT
(after warm-up) stays within the target.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from evicctl.replay.catalog import Catalog
from evicctl.replay.replay import RunResult
from evicctl.replay.trace import Trace

SLO_P99_FACTOR = 2.0  # default target: p99 TTFT within 2x an unloaded full prefill's p99
MAX_BATCH = 1  # one prefill at a time (the conservative engine); batching amortises the intercept
SEARCH_STEPS = 10  # bisection steps between a passing and a failing rate (0.07% of a 2x bracket)


@dataclass(frozen=True, eq=False)
class ServiceTimes:
    link: np.ndarray  # [R] lower tier whose link loads it; -1: nothing to load (miss, top tier)
    load_s: np.ndarray  # [R] seconds on that link
    compute_s: np.ndarray  # [R] seconds on the compute device
    overhead_s: float  # per-call part of compute_s that a batch pays once


def service_times(catalog: Catalog, trace: Trace, result: RunResult) -> ServiceTimes:
    """Split each request's unloaded TTFT into a link load and compute."""
    tier, codec = result.served_tier, result.served_codec
    ttft = np.asarray(result.ttft_s, dtype=float)
    loads = np.flatnonzero(tier > 0)  # hits on a lower tier (a top-tier read is compute)
    load_s = np.zeros(len(ttft))
    load_s[loads] = catalog.stored_bytes[codec[loads], trace.context[loads]] / catalog.read_bps[tier[loads]]
    link = np.where(tier > 0, tier, -1)
    intercept = float(np.asarray(catalog.cost_model.coef)[0])
    return ServiceTimes(link=link, load_s=load_s, compute_s=np.maximum(ttft - load_s, 0.0), overhead_s=intercept)


def queued_ttft(arrival_s: np.ndarray, service: ServiceTimes, *, max_batch: int = MAX_BATCH) -> np.ndarray:
    """[R] TTFT of every request with waiting (see the module docstring)."""
    ready = np.asarray(arrival_s, dtype=float).copy()
    for t in np.unique(service.link[service.link >= 0]).tolist():
        rows = np.flatnonzero(service.link == t)
        ready[rows] = _fifo(ready[rows].tolist(), service.load_s[rows].tolist())
    order = np.argsort(ready, kind="stable")
    done = np.empty(len(ready))
    if max_batch <= 1:
        done[order] = _fifo(ready[order].tolist(), service.compute_s[order].tolist())
    else:
        done[order] = _batched(ready[order].tolist(), service.compute_s[order].tolist(), max_batch, service.overhead_s)
    return done - arrival_s


def _fifo(ready: list[float], work_s: list[float]) -> list[float]:
    """Completion times of one server taking jobs in order (Lindley's recursion)."""
    out, free = [], 0.0
    for r, w in zip(ready, work_s, strict=True):
        free = (free if free > r else r) + w
        out.append(free)
    return out


def _batched(ready: list[float], work_s: list[float], max_batch: int, overhead_s: float) -> list[float]:
    out, free, k, n = [0.0] * len(ready), 0.0, 0, len(ready)
    while k < n:
        start = free if free > ready[k] else ready[k]
        j = k + 1
        while j < n and j - k < max_batch and ready[j] <= start:
            j += 1
        end = start + overhead_s + sum(max(w - overhead_s, 0.0) for w in work_s[k:j])
        out[k:j] = [end] * (j - k)
        free, k = end, j
    return out


def p99_at(qps: float, trace: Trace, service: ServiceTimes, warmup: int, *, max_batch: int = MAX_BATCH) -> float:
    """p99 TTFT (after warm-up) with the trace's arrivals time-scaled to `qps`."""
    arrival = trace.at_s * (trace_qps(trace) / qps)
    return float(np.percentile(queued_ttft(arrival, service, max_batch=max_batch)[warmup:], 99))


def trace_qps(trace: Trace) -> float:
    return len(trace) / max(float(trace.at_s[-1] - trace.at_s[0]), 1e-9)


def max_qps(trace: Trace, service: ServiceTimes, slo_p99_s: float, warmup: int, *, max_batch: int = MAX_BATCH) -> float:
    """The highest arrival rate whose p99 TTFT is within `slo_p99_s` (0 if none is)."""
    def ok(q: float) -> bool:
        return p99_at(q, trace, service, warmup, max_batch=max_batch) <= slo_p99_s

    lo = trace_qps(trace) / 64  # nearly unloaded
    if not ok(lo):
        return 0.0
    hi = lo * 2
    while ok(hi):
        lo, hi = hi, hi * 2
        if hi > 1e6:
            return hi
    for _ in range(SEARCH_STEPS):
        mid = (lo * hi) ** 0.5
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo


def default_slo_p99_s(catalog: Catalog, trace: Trace, warmup: int) -> float:
    """SLO_P99_FACTOR x the p99 of unloaded full prefills of the trace's requests."""
    miss = catalog.miss_ttft(trace.context, trace.query_tokens)[warmup:]
    return SLO_P99_FACTOR * float(np.percentile(miss, 99))


def throughput(result: RunResult, catalog: Catalog, trace: Trace, slo_p99_s: float) -> dict:
    """Summary fields: TTFT with waiting at the trace's rate, and the max QPS within the SLO."""
    service = service_times(catalog, trace, result)
    queued = queued_ttft(trace.at_s, service)[result.warmup:]
    return {
        "queued_ttft_mean_s": float(queued.mean()),
        "queued_ttft_p99_s": float(np.percentile(queued, 99)),
        "slo_p99_s": slo_p99_s,
        "max_qps": max_qps(trace, service, slo_p99_s, result.warmup),
    }
