"""Reference solvers for the placement problem, to measure the greedy placer against.

- `solve_exact`: the multiple-choice knapsack solved exactly with scipy's MILP (HiGHS): one
  option per context, bytes per tier within capacity, maximum total utility. Small instances.
- `lagrangian_bound`: an upper bound on the optimum for any size (weak duality: any tier prices
  lambda >= 0 bound it; we search lambda coordinate-wise). Equal to the LP relaxation's bound at
  the best lambda, so it is cheap to compute where the MILP is not.
- `naive_place`: the same sequential greedy as `placer.place`, one move at a time from a heap in
  plain Python; the reference for the vectorised version and the baseline of its benchmark.
- `random_problem`: random instances with the shapes and magnitudes of DESIGN §8.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np

from evicctl.config import DEFAULT_CODECS
from evicctl.manager.codecs.names import parse_codec_name
from evicctl.manager.placer.place import (
    DROPPED,
    PlacementProblem,
    Plan,
    build_options,
    finish_plan,
    initial_options,
)


@dataclass(frozen=True)
class ExactResult:
    option: np.ndarray  # [N] chosen flat option (c * T + t, or C * T for dropped)
    total_utility: float
    status: str  # "optimal" or scipy's message


def solve_exact(problem: PlacementProblem, *, time_limit_s: float = 30.0, relax: bool = False) -> ExactResult:
    """Best total utility over all feasible assignments (or its LP relaxation with relax=True).

    Contexts with no allowed option are fixed at their current option, as the greedy does.
    """
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import csr_matrix

    p = problem
    opts = build_options(p)
    n, n_tiers = p.n_contexts, len(p.tiers)
    n_stored = len(p.codecs) * n_tiers
    feasible = opts.feasible()
    stuck = ~feasible.any(axis=1)
    feasible[stuck, np.maximum(opts.current[stuck], 0)] = True
    rows, cols = np.nonzero(feasible)
    n_vars = len(rows)
    utility = opts.flat_value()[rows, cols] * p.freq[rows]
    size = np.where(cols < n_stored, p.stored_bytes[np.minimum(cols // n_tiers, len(p.codecs) - 1), rows], 0)
    tier = np.where(cols < n_stored, cols % n_tiers, -1)

    one_each = csr_matrix((np.ones(n_vars), (rows, np.arange(n_vars))), shape=(n, n_vars))
    stored = tier >= 0
    # Scale bytes to GiB so the constraint matrix is well conditioned for HiGHS.
    scale = 1.0 / (1 << 30)
    cap_rows = csr_matrix(
        (size[stored] * scale, (tier[stored], np.flatnonzero(stored))), shape=(n_tiers, n_vars)
    )
    constraints = [
        LinearConstraint(one_each, 1, 1),
        LinearConstraint(cap_rows, -np.inf, p.capacity_bytes * scale),
    ]
    res = milp(
        -utility,
        constraints=constraints,
        integrality=np.zeros(n_vars) if relax else np.ones(n_vars),
        bounds=Bounds(0, 1),
        options={"time_limit": time_limit_s},
    )
    if res.x is None:
        return ExactResult(np.full(n, -1), float("nan"), str(res.message))
    x = res.x
    chosen = np.full(n, -1)
    best = np.zeros(n)
    # With relax=True a context may be split; report its largest share (the bound is -res.fun).
    for r, c, v in zip(rows, cols, x, strict=True):
        if v > best[r]:
            best[r], chosen[r] = v, c
    return ExactResult(chosen, float(-res.fun), "optimal" if res.status == 0 else str(res.message))


def lagrangian_bound(problem: PlacementProblem, *, sweeps: int = 4, steps: int = 40) -> float:
    """An upper bound on the best total utility: min over tier prices of the Lagrangian dual.

    L(lam) = sum_i max_o (U_io - lam[tier(o)] * bytes_io) + sum_t lam_t * capacity_t >= OPT for
    every lam >= 0; minimised coordinate by coordinate with a golden-section search (L is convex).
    """
    p = problem
    opts = build_options(p)
    n, n_codecs, n_tiers = p.n_contexts, len(p.codecs), len(p.tiers)
    feasible = opts.feasible()
    stuck = ~feasible.any(axis=1)
    feasible[stuck, np.maximum(opts.current[stuck], 0)] = True
    utility = np.where(feasible, opts.flat_value() * p.freq[:, None], -np.inf)
    size = np.zeros((n, n_codecs * n_tiers + 1))
    size[:, :-1] = np.repeat(p.stored_bytes.T, n_tiers, axis=1)
    option_tier = np.append(np.tile(np.arange(n_tiers), n_codecs), n_tiers)
    cap = p.capacity_bytes.astype(np.float64)

    def dual(lam: np.ndarray) -> float:
        price = np.append(lam, 0.0)[option_tier]  # dropped uses no tier
        return float((utility - size * price).max(axis=1).sum() + (lam * cap).sum())

    lam = np.zeros(n_tiers)
    best = dual(lam)
    # Price scale: the largest utility per byte any option has.
    hi0 = float(np.nanmax(np.abs(np.where(np.isfinite(utility), utility, 0)) / np.maximum(size, 1))) * 2 + 1e-30
    golden = (np.sqrt(5) - 1) / 2
    for _ in range(sweeps):
        for t in range(n_tiers):
            lo, hi = 0.0, hi0

            def f(v: float, t: int = t) -> float:
                trial = lam.copy()
                trial[t] = v
                return dual(trial)

            a, b = hi - golden * (hi - lo), lo + golden * (hi - lo)
            fa, fb = f(a), f(b)
            for _ in range(steps):
                if fa < fb:
                    hi, b, fb = b, a, fa
                    a = hi - golden * (hi - lo)
                    fa = f(a)
                else:
                    lo, a, fa = a, b, fb
                    b = lo + golden * (hi - lo)
                    fb = f(b)
            v = (lo + hi) / 2
            fv = f(v)
            if fv < best:
                best, lam[t] = fv, v
            elif f(0.0) < best:
                best, lam[t] = f(0.0), 0.0
    return best


def naive_place(problem: PlacementProblem) -> Plan:
    """The greedy, one move at a time: pop the cheapest loss per byte freed from a heap.

    Same rules and tie-breaks as `placer.place` (the initial choice is shared; relieving the
    tiers is what this re-implements), in plain Python floats.
    """
    p = problem
    opts = build_options(p)
    opt, conflicts = initial_options(p, opts)
    opt = [int(o) for o in opt]
    value = opts.flat_value().tolist()
    freq = p.freq.tolist()
    codec_ok, tier_ok, drop_ok = opts.codec_ok.T.tolist(), opts.tier_ok.T.tolist(), opts.drop_ok.tolist()
    sizes = p.stored_bytes.T.tolist()
    n_codecs, n_tiers = len(p.codecs), len(p.tiers)
    n_stored = n_codecs * n_tiers

    def best_exit(i: int, t: int) -> tuple[float, int]:
        entry_bytes, best = sizes[i][opt[i] // n_tiers], (float("-inf"), -1)
        for lower in range(t + 1, n_tiers):
            for c in range(n_codecs):
                o = c * n_tiers + lower
                if codec_ok[i][c] and tier_ok[i][lower] and sizes[i][c] <= entry_bytes and value[i][o] > best[0]:
                    best = (value[i][o], o)
        if drop_ok[i] and value[i][n_stored] > best[0]:
            best = (value[i][n_stored], n_stored)
        return best

    def next_move(i: int, t: int, exit_: tuple[float, int]):
        here, cur = opt[i], sizes[i][opt[i] // n_tiers]
        best = None
        for c in range(n_codecs):
            o = c * n_tiers + t
            if codec_ok[i][c] and tier_ok[i][t] and sizes[i][c] < cur:
                freed = cur - sizes[i][c]
                cand = (freq[i] * (value[i][here] - value[i][o]) / freed, -freed, o)
                best = cand if best is None or cand < best else best
        if exit_[1] >= 0:
            cand = (freq[i] * (value[i][here] - exit_[0]) / cur, -cur, exit_[1])
            best = cand if best is None or cand < best else best
        return best

    for t in range(n_tiers):
        rows = [i for i, o in enumerate(opt) if 0 <= o < n_stored and o % n_tiers == t]
        used = sum(sizes[i][opt[i] // n_tiers] for i in rows)
        if used <= p.capacity_bytes[t]:
            continue
        exits = {i: best_exit(i, t) for i in rows}
        heap = []
        for i in rows:
            m = next_move(i, t, exits[i])
            if m is not None:
                heapq.heappush(heap, (m[0], m[1], i, m[2]))
        while used > p.capacity_bytes[t] and heap:
            _, neg_freed, i, target = heapq.heappop(heap)
            used += neg_freed
            opt[i] = target
            if target < n_stored and target % n_tiers == t:
                m = next_move(i, t, exits[i])
                if m is not None:
                    heapq.heappush(heap, (m[0], m[1], i, m[2]))
    return finish_plan(p, opts, np.asarray(opt, dtype=np.int64), conflicts)


# --- random instances -------------------------------------------------------------------------

# Tier read bandwidths (bytes/s), fastest first (DESIGN §8: H200 device copy, pinned H2D, NVMe).
_READ_BPS = (2.0e12, 5.0e10, 2.0e9, 5.0e8)


def _codec_shape(name: str) -> tuple[float, int]:
    """(fraction of tokens kept, quant bits; 16 = unquantized) from a codec name."""
    parts = parse_codec_name(name)
    return parts.keep_fraction, parts.bits or 16


def random_problem(
    rng: np.random.Generator,
    n_contexts: int,
    *,
    codecs: tuple[str, ...] = DEFAULT_CODECS,
    n_tiers: int = 3,
    capacity_fractions: tuple[float, ...] | None = None,
    alpha: float = 2.0,
    existing: float = 0.0,
) -> PlacementProblem:
    """A random instance: Llama-8B-sized KV (128 KiB/token), 1k-32k tokens, skewed frequencies.

    capacity_fractions: each tier's capacity as a fraction of the total raw KV (default: random,
    so that at least the top tier overflows). existing: fraction of contexts already placed
    (at their best option for a single-tier problem: `none` on the top tier).
    """
    n, n_codecs = n_contexts, len(codecs)
    tokens = rng.integers(1_000, 32_000, n)
    raw = tokens * (128 << 10)
    shapes = [_codec_shape(c) for c in codecs]
    keep = np.array([k for k, _ in shapes])
    bits = np.array([b for _, b in shapes])
    # Quantized: codes plus fp16 scale and min per group of 32 (two fp16 per 32 values).
    byte_frac = keep * np.where(bits < 16, bits / 16 + 2 * 2 / (32 * 2), 1.0)
    stored_bytes = np.ceil(raw[:, None] * byte_frac[None, :]).astype(np.int64)  # [N, C]

    sensitivity = rng.uniform(0.2, 0.9, (n, 1))  # how much dropping hurts this context
    quant_noise = rng.uniform(0.0, 1.0, (n, 1))
    q_drop = 1.0 - sensitivity * (1.0 - keep[None, :]) * rng.uniform(0.8, 1.2, (n, n_codecs))
    # quantization's quality: (base, context sensitivity) per width, lower and more spread with
    # fewer bits (int2/int3 are not free: without this the random placer would take int2 always)
    quant_q = {8: (0.99, 0.0), 4: (0.95, 0.3), 3: (0.9, 0.4), 2: (0.8, 0.5), 16: (1.0, 0.0)}
    base = np.array([quant_q[b][0] for b in bits])[None, :]
    spread = np.array([quant_q[b][1] for b in bits])[None, :]
    q_quant = base - spread * quant_noise
    quality = np.clip(q_drop * q_quant, 0.0, 1.0)
    quality[:, [c == "none" for c in codecs]] = 1.0
    sd = rng.uniform(0.01, 0.1, (n, n_codecs))

    def prefill_s(new, cached):  # fitted shape of DESIGN §8's H200 numbers
        return 0.005 + 2.5e-5 * new + 6e-10 * new * (new + cached)

    query = 64
    kept = tokens[:, None] * keep[None, :]
    decode_s = np.where(bits < 16, stored_bytes / 1.5e11, 0.0)
    read_bps = np.array(_READ_BPS[:n_tiers])
    ttft = stored_bytes[:, :, None] / read_bps + (decode_s + prefill_s(query, kept))[:, :, None]
    miss = prefill_s(tokens + query, 0)
    freq = rng.lognormal(-3.0, 1.5, n)

    if capacity_fractions is None:
        capacity_fractions = tuple(rng.uniform(0.05, 0.5, n_tiers))
    capacity = (np.array(capacity_fractions) * raw.sum()).astype(np.int64)

    current_tier = np.full(n, -1)
    current_codec = np.full(n, -1)
    placed = rng.random(n) < existing
    none = codecs.index("none") if "none" in codecs else 0
    current_tier[placed], current_codec[placed] = 0, none
    return PlacementProblem(
        context_ids=np.array([f"ctx{i}" for i in range(n)], dtype=object),
        freq=freq,
        tokens=tokens,
        codecs=tuple(codecs),
        tiers=("gpu", "cpu", "disk", "remote")[:n_tiers],
        capacity_bytes=capacity,
        stored_bytes=np.ascontiguousarray(stored_bytes.T),
        quality=np.ascontiguousarray(quality.T),
        quality_lower=np.ascontiguousarray(np.clip(quality - 2 * sd, 0.0, 1.0).T),
        ttft_s=np.ascontiguousarray(ttft.transpose(2, 1, 0), dtype=np.float32),
        miss_ttft_s=miss,
        alpha=alpha,
        current_tier=current_tier,
        current_codec=current_codec,
    )


__all__ = ["DROPPED", "ExactResult", "lagrangian_bound", "naive_place", "random_problem", "solve_exact"]
