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

Stores (`store_times`): a miss whose new KV the replay admitted keeps the servers busy after
its first token, which is out before the store, so its own TTFT is unchanged:
- the compute device encodes it, right after the request's compute and before it takes the
  next one: the raw KV bytes at the codec's encode throughput (raw bytes per second, by
  codec family and quantized width: ENCODE_BPS, measured on this CPU and on the H200); a
  copy admitted to the top tier is also written there by the compute device; a run that may
  pick a kvzip codec also runs KVzip's reconstruction pass over every context it stores
  (KVZIP_PASS_PREFILLS x the context's prefill; Expected Attention's scores are free);
- a copy admitted to a lower tier is then written over that tier's link (stored bytes at
  the tier's write bandwidth: the Manager's probed figure where known, else the link's read
  bandwidth), FIFO with the loads, so a load queued behind the write waits for it.
The engine does not wait for that write (it is a copy the link carries). An engine that
stores synchronously, as the reference engine (evicctl.engine) does, writes before it takes
the next request: `StoreCosts.synchronous` charges every write to the compute device instead.
Moves of copies already stored (re-plans, spills) are not charged: only new KVs.
Links and compute depend on each other through the writes, so one pass over the requests in
arrival order serves both (an event-ordered simulation, `_serve`); where no write is on a link,
the links are served first and then the compute (`_serve_links_first`, the same result, faster).

Throughput: arrivals are the trace's, time-scaled to a given rate; decisions are the
replay's at the trace's own rate (placement does not depend on load: LRU-like policies
see only the order, and the placer's rates all scale alike), so one replay per policy
gives its whole TTFT-vs-QPS curve. `max_qps` bisects for the highest rate whose p99 TTFT
(after warm-up) stays within the target.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass

import numpy as np

from evicctl.manager.codecs.names import parse_codec_name
from evicctl.manager.costs import WIDTH_SEP, decode_key
from evicctl.replay.catalog import Catalog
from evicctl.replay.replay import RunResult
from evicctl.replay.trace import Trace

SLO_P99_FACTOR = 2.0  # default target: p99 TTFT within 2x an unloaded full prefill's p99
MAX_BATCH = 1  # one prefill at a time (the conservative engine); batching amortises the intercept
SEARCH_STEPS = 10  # bisection steps between a passing and a failing rate (0.07% of a 2x bracket)
# Raw (uncompressed) KV bytes a codec encodes per second on the compute device, by family (a
# quantized width falls back to its family, as CostModel.decode_bps does). `none` hands the
# tensors over as they are (the tier's write is the copy).
# CPU: benchmarks/codec_bench.py on this 2-core machine (BENCHMARKS.md, "Codecs and disk tier
# on the CPU", SmolLM2 KV, 1k and 4k tokens): int8 0.44-0.53 GB/s, int4 0.39-0.46, knorm or
# keydiff drop 0.70-1.52, snapkv 0.26-0.72, knorm+int8 0.42-1.04.
# GPU: DESIGN §8 on the H200: int8 quantize of a Llama-3.1-8B-shaped KV 142 GB/s, a gather of
# half the tokens 620 GB/s (the kernels fuse the gather into the quantizer).
ENCODE_BPS = {
    "cpu": {"none": 1e12, "drop": 0.7e9, "quant": 0.45e9, "drop+quant": 0.6e9},
    "gpu": {"none": 1e12, "drop": 620e9, "quant": 142e9, "drop+quant": 142e9},
}


@dataclass(frozen=True)
class StoreCosts:
    """What storing a new KV costs (module docstring): encode throughput on the compute
    device (raw bytes/s by family or decode key) and write bandwidth per tier."""

    encode_bps: dict[str, float]
    write_bps: tuple[float, ...]  # [T], the catalog's tiers
    synchronous: bool = False  # the engine waits for every write (the compute device writes)
    kvzip_pass: bool = True  # a run that may pick kvzip codecs pays KVzip's pass per stored context

    def encode_bps_of(self, codec: str) -> float:
        key = decode_key(codec)
        bps = self.encode_bps.get(key)
        return bps if bps is not None else self.encode_bps[key.partition(WIDTH_SEP)[0]]


def store_costs(
    catalog: Catalog, write_bps: dict[str, float] | None = None, *, synchronous: bool = False, kvzip_pass: bool = True
) -> StoreCosts:
    """The catalog's store costs: the GPU's encode figures where there is a GPU tier (the
    compute device is the GPU), else the CPU's; each tier's write bandwidth from `write_bps`
    (tier name -> bytes/s, as the Manager probed it), else its read bandwidth."""
    device = "gpu" if "gpu" in catalog.tiers else "cpu"
    written = write_bps or {}
    return StoreCosts(
        encode_bps=dict(ENCODE_BPS[device]),
        write_bps=tuple(float(written.get(t, bps)) for t, bps in zip(catalog.tiers, catalog.read_bps, strict=True)),
        synchronous=synchronous,
        kvzip_pass=kvzip_pass,
    )


# KVzip's reconstruction pass, in prefills of the same context: 32.9 s against a 12.0 s
# prefill per 1k tokens (docs/codecs.md, benchmarks/token_scores_bench.py, this CPU; not
# measured on a GPU, where the same two forwards should keep about the same ratio)
KVZIP_PASS_PREFILLS = 2.7
def scoring_prefills(result: RunResult) -> float:
    """Prefills of extra compute a stored context costs for the token scores the run's menu
    needs: KVzip's pass when a codec it could store in scores with kvzip (Expected
    Attention's statistics come with the one prefill)."""
    return KVZIP_PASS_PREFILLS if any(parse_codec_name(c).scorer == "kvzip" for c in result.menu) else 0.0


@dataclass(frozen=True, eq=False)
class ServiceTimes:
    link: np.ndarray  # [R] lower tier whose link loads it; -1: nothing to load (miss, top tier)
    load_s: np.ndarray  # [R] seconds on that link
    compute_s: np.ndarray  # [R] seconds on the compute device
    overhead_s: float  # per-call part of compute_s that a batch pays once
    # the store after the first token (store_times); None: nothing stored
    store_s: np.ndarray | None = None  # [R] compute seconds after the request's own compute
    write_link: np.ndarray | None = None  # [R] lower tier whose link the write occupies, -1: none
    write_s: np.ndarray | None = None  # [R] seconds on that link

    def __post_init__(self) -> None:
        n = len(self.compute_s)
        if self.store_s is None:
            object.__setattr__(self, "store_s", np.zeros(n))
        if self.write_link is None:
            object.__setattr__(self, "write_link", np.full(n, -1, dtype=np.int64))
        if self.write_s is None:
            object.__setattr__(self, "write_s", np.zeros(n))


def service_times(catalog: Catalog, trace: Trace, result: RunResult, store: StoreCosts | bool = True) -> ServiceTimes:
    """Split each request's unloaded TTFT into a link load and compute, and charge the stores
    of admitted misses (store_times): at `store`'s costs, the catalog's (store_costs) when
    True, none when False."""
    tier, codec = result.served_tier, result.served_codec
    ttft = np.asarray(result.ttft_s, dtype=float)
    loads = np.flatnonzero(tier > 0)  # hits on a lower tier (a top-tier read is compute)
    load_s = np.zeros(len(ttft))
    load_s[loads] = catalog.stored_bytes[codec[loads], trace.context[loads]] / catalog.read_bps[tier[loads]]
    link = np.where(tier > 0, tier, -1)
    intercept = float(np.asarray(catalog.cost_model.coef)[0])
    costs = store_costs(catalog) if store is True else store
    store_s, write_link, write_s = (None, None, None) if costs is False else store_times(catalog, trace, result, costs)
    return ServiceTimes(link=link, load_s=load_s, compute_s=np.maximum(ttft - load_s, 0.0), overhead_s=intercept,
                        store_s=store_s, write_link=write_link, write_s=write_s)


def store_times(catalog: Catalog, trace: Trace, result: RunResult, costs: StoreCosts) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """([R] compute seconds, [R] link, [R] link seconds) of each request's store after its
    first token: an admitted miss's encode (raw bytes / the codec's encode_bps) and any token
    scoring pass the run's menu needs (scoring_prefills x its prefill) on the compute device,
    and its write (stored bytes / the tier's write_bps) on the compute device for the top tier (every tier when the store is synchronous), else on that tier's link (-1: no write
    on a link). Zero where nothing was stored."""
    n = len(trace)
    store_s, write_link, write_s = np.zeros(n), np.full(n, -1, dtype=np.int64), np.zeros(n)
    if result.admitted_tier is None:
        return store_s, write_link, write_s
    rows = np.flatnonzero(result.admitted_tier >= 0)
    ctx, tier, codec = trace.context[rows], result.admitted_tier[rows], result.admitted_codec[rows]
    encode_bps = np.array([costs.encode_bps_of(c) for c in catalog.codecs])
    raw_bytes = catalog.stored_bytes[catalog.codecs.index("none"), ctx]
    written_s = catalog.stored_bytes[codec, ctx] / np.asarray(costs.write_bps, dtype=float)[tier]
    lower = (tier > 0) & (not costs.synchronous)  # written over a link while the compute goes on
    scoring_s = scoring_prefills(result) * catalog.miss_ttft_s[ctx] if costs.kvzip_pass else 0.0
    store_s[rows] = raw_bytes / encode_bps[codec] + scoring_s + np.where(lower, 0.0, written_s)
    write_link[rows] = np.where(lower, tier, -1)
    write_s[rows] = np.where(lower, written_s, 0.0)
    return store_s, write_link, write_s


def queued_ttft(arrival_s: np.ndarray, service: ServiceTimes, *, max_batch: int = MAX_BATCH) -> np.ndarray:
    """[R] TTFT of every request with waiting (see the module docstring)."""
    arrival = np.asarray(arrival_s, dtype=float)
    max_batch = max(1, max_batch)
    if (service.write_link < 0).all():  # no write on a link: the loads do not wait for the compute
        return _serve_links_first(arrival, service, max_batch) - arrival
    return _serve(arrival, service, max_batch) - arrival


def _serve_links_first(arrival: np.ndarray, s: ServiceTimes, max_batch: int) -> np.ndarray:
    """[R] end of each request's compute, as `_serve` gives it, when no write occupies a link
    (6x faster: max_qps serves a trace a dozen times): each link's loads first, in arrival
    order, then the compute device in the order requests became ready."""
    ready = arrival.copy()
    by_arrival = np.argsort(arrival, kind="stable")
    for t in np.unique(s.link[s.link >= 0]).tolist():
        rows = by_arrival[s.link[by_arrival] == t]
        ready[rows] = _fifo(ready[rows].tolist(), s.load_s[rows].tolist())
    order = np.argsort(ready, kind="stable")
    done = np.empty(len(ready))
    work = ready[order].tolist(), s.compute_s[order].tolist(), s.store_s[order].tolist()
    done[order] = _one_at_a_time(*work) if max_batch == 1 else _batched(*work, max_batch, s.overhead_s)
    return done


def _fifo(ready: list[float], work_s: list[float]) -> list[float]:
    """Completion times of one server taking jobs in order (Lindley's recursion)."""
    out, free = [], 0.0
    for r, w in zip(ready, work_s, strict=True):
        free = (free if free > r else r) + w
        out.append(free)
    return out


def _one_at_a_time(ready: list[float], work_s: list[float], store_s: list[float]) -> list[float]:
    """Ends of the compute device's jobs taken in ready order, each followed by its store."""
    out, free = [], 0.0
    for r, w, st in zip(ready, work_s, store_s, strict=True):
        end = (free if free > r else r) + w
        out.append(end)
        free = end + st
    return out


def _batched(ready: list[float], work_s: list[float], store_s: list[float], max_batch: int, overhead_s: float) -> list[float]:
    """Ends of the compute device's batches (jobs in ready order), each followed by its members' stores."""
    out, free, k, n = [0.0] * len(ready), 0.0, 0, len(ready)
    while k < n:
        start = free if free > ready[k] else ready[k]
        j = k + 1
        while j < n and j - k < max_batch and ready[j] <= start:
            j += 1
        end = start + overhead_s + sum(max(w - overhead_s, 0.0) for w in work_s[k:j])
        out[k:j] = [end] * (j - k)
        free, k = end + sum(store_s[k:j]), j
    return out


def _serve(arrival: np.ndarray, s: ServiceTimes, max_batch: int) -> np.ndarray:
    """[R] end of each request's compute. Requests are taken in arrival order: a load joins its
    link's FIFO at arrival, behind the writes that joined before it, and the request is ready
    for the compute when the load ends (at arrival when there is nothing to load). The compute
    device takes ready requests in the order they became ready, a batch of up to `max_batch`,
    then encodes the batch's stores one after another; each lower-tier write joins its link when
    its encode ends. Before each arrival the compute device starts every batch that no request
    arriving later can join or precede (so writes that join before that arrival are known)."""
    n = len(arrival)
    done = [0.0] * n
    at, link, load_s, compute_s = arrival.tolist(), s.link.tolist(), s.load_s.tolist(), s.compute_s.tolist()
    store_s, write_link, write_s = s.store_s.tolist(), s.write_link.tolist(), s.write_s.tolist()
    link_free: dict[int, float] = {}
    # link -> (joined at, seconds) of its writes not yet served, in join order
    writes: dict[int, deque[tuple[float, float]]] = {t: deque() for t in set(write_link) if t >= 0}
    ready: list[tuple[float, int]] = []  # heap of (ready at, request) waiting for the compute device
    free = 0.0  # when the compute device is next free

    def start_batches(until: float) -> None:
        nonlocal free
        while ready and ready[0][0] <= until:
            if max_batch == 1:  # the earliest ready goes next, whatever arrives later
                r, k = heapq.heappop(ready)
                members, end = (k,), (free if free > r else r) + compute_s[k]
            else:
                start = max(free, ready[0][0])
                batch = []  # ready by the start; a batch starting at or after `until` may gain later arrivals
                while ready and len(batch) < max_batch and ready[0][0] <= min(start, until):
                    batch.append(heapq.heappop(ready))
                if start >= until and len(batch) < max_batch:
                    for job in batch:
                        heapq.heappush(ready, job)
                    return
                members = [k for _, k in batch]
                end = start + s.overhead_s + sum(max(compute_s[k] - s.overhead_s, 0.0) for k in members)
            free = end
            for k in members:
                done[k] = end
                free += store_s[k]
                if write_link[k] >= 0:
                    writes[write_link[k]].append((free, write_s[k]))

    for k in np.argsort(arrival, kind="stable").tolist():
        a, t = at[k], link[k]
        if ready and ready[0][0] <= a:
            start_batches(a)
        if t < 0:
            heapq.heappush(ready, (a, k))
            continue
        free_at = link_free.get(t, 0.0)
        queued = writes.get(t)
        while queued and queued[0][0] <= a:  # the writes that joined this link before the load
            joined, seconds = queued.popleft()
            free_at = (free_at if free_at > joined else joined) + seconds
        free_at = (free_at if free_at > a else a) + load_s[k]
        link_free[t] = free_at
        heapq.heappush(ready, (free_at, k))
    start_batches(float("inf"))
    return np.array(done)


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
