"""Ratios the paper reports, from one bench run's summaries (DESIGN §1, issue 7 item 6).

- vs fixed, at equal quality: for each `fixed` point (one codec and ratio), our TTFT at the
  same mean quality, read off the Pareto front of our alpha sweep by linear interpolation
  (paper: 1.43-3.77x). A fixed point above our best quality (by more than QUALITY_TIE) has
  no match and is reported as such, not extrapolated; one below our worst is compared with
  our worst (which is then better on both axes).
- vs lru and vs prefill: our fastest point whose quality loss is under 3% (paper:
  1.22-1.56x vs lru, 1.29-2.19x vs prefill).
- greedy vs exact: the mean and worst relative utility gap over the re-plans the exact
  policy solved, and the two policies' delays and qualities.
"""

from __future__ import annotations

import math

import numpy as np

PAPER = {
    "vs_fixed": (1.43, 3.77),
    "vs_lru": (1.22, 1.56),
    "vs_prefill": (1.29, 2.19),
}
QUALITY_LOSS = 0.03  # "under 3% quality drop"
QUALITY_TIE = 0.001  # qualities this close count as equal (.9995 vs 1.0)
QUALITY_TARGET = 0.97  # issue 16: the best baseline is the fastest one at or above this mean quality
BASELINE_FAMILIES = ("prefill", "lru", "fixed", "arc", "gdsf", "tinylfu")  # what a user could pick instead


def pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """(quality, ttft) points on the front: no other point has higher quality and lower TTFT,
    sorted by quality."""
    front: list[tuple[float, float]] = []
    for q, t in sorted(points, key=lambda p: (-p[0], p[1])):
        if not front or t < front[-1][1]:
            front.append((q, t))
    return sorted(front)


def ttft_at_quality(front: list[tuple[float, float]], quality: float) -> float | None:
    """Our TTFT at `quality` on the front (linear between points); None outside its range.
    Between two front points the better-quality one is reachable at the lower-quality one's
    cost only by mixing policies, so interpolation is the honest (achievable) estimate."""
    if not front:
        return None
    qs = np.array([q for q, _ in front])
    ts = np.array([t for _, t in front])
    if quality > qs.max() + QUALITY_TIE:
        return None
    quality = min(quality, float(qs.max()))
    if quality <= qs.min():
        return float(ts[0])  # our lowest-quality point is already at least this good
    return float(np.interp(quality, qs, ts))


def comparisons(summaries: list[dict], *, quality_target: float = QUALITY_TARGET) -> dict:
    ours = [s for s in summaries if s["family"] == "evicpress"]
    front = pareto([(s["quality_mean"], s["ttft_mean_s"]) for s in ours])
    out: dict = {"paper": {k: list(v) for k, v in PAPER.items()}, "front": front}
    fixed = []
    for s in summaries:
        if s["family"] != "fixed":
            continue
        t = ttft_at_quality(front, s["quality_mean"])
        fixed.append({
            "policy": s["policy"],
            "quality": s["quality_mean"],
            "ttft_s": s["ttft_mean_s"],
            "ours_ttft_s": t,
            "ratio": None if t is None else s["ttft_mean_s"] / t,
        })
    out["vs_fixed"] = fixed
    ratios = [f["ratio"] for f in fixed if f["ratio"] is not None]
    out["vs_fixed_range"] = [min(ratios), max(ratios)] if ratios else None
    for base in ("lru", "prefill", "lru-plain"):
        b = next((s for s in summaries if s["policy"] == base), None)
        if b is None or not ours:
            continue
        ok = [s for s in ours if s["quality_mean"] >= (1 - QUALITY_LOSS) * b["quality_mean"]]
        if not ok:
            out[f"vs_{base}"] = None
            continue
        best = min(ok, key=lambda s: s["ttft_mean_s"])
        out[f"vs_{base}"] = {
            "ours": best["policy"],
            "ours_ttft_s": best["ttft_mean_s"],
            "ours_quality": best["quality_mean"],
            "base_ttft_s": b["ttft_mean_s"],
            "base_quality": b["quality_mean"],
            "ratio": b["ttft_mean_s"] / best["ttft_mean_s"] if best["ttft_mean_s"] > 0 else math.inf,
        }
    out["placement_vs_lru"] = _ratio(summaries, "lru", "placement-only")
    out["quality_target"] = quality_target
    out["best_baseline"] = _vs_best(summaries, front, BASELINE_FAMILIES, quality_target)
    out["best_fixed"] = _vs_best(summaries, front, ("lru", "fixed"), quality_target)
    dropping = [f["ratio"] for f in fixed if f["ratio"] is not None and "@" in (f["policy"] or "")]
    out["vs_fixed_dropping_median"] = float(np.median(dropping)) if dropping else None
    out["gap_closed"] = gap_closed(summaries)
    out["throughput"] = throughput_ratios(summaries, quality_target)
    exact = next((s for s in summaries if s["family"] == "exact"), None)
    if exact is not None:
        greedy = next((s for s in summaries if s["policy"] == "evicpress"), None)
        out["greedy_vs_exact"] = {
            "utility_gap_mean": exact.get("exact_gap_mean"),
            "utility_gap_max": exact.get("exact_gap_max"),
            "problems": exact.get("exact_problems"),
            "exact_ttft_s": exact["ttft_mean_s"],
            "exact_quality": exact["quality_mean"],
            "greedy_ttft_s": None if greedy is None else greedy["ttft_mean_s"],
            "greedy_quality": None if greedy is None else greedy["quality_mean"],
        }
    return out


def _ratio(summaries: list[dict], base: str, ours: str) -> float | None:
    b = next((s for s in summaries if s["policy"] == base), None)
    o = next((s for s in summaries if s["policy"] == ours), None)
    if b is None or o is None or o["ttft_mean_s"] <= 0:
        return None
    return b["ttft_mean_s"] / o["ttft_mean_s"]


def _vs_best(summaries: list[dict], front, families: tuple[str, ...], quality_target: float) -> dict | None:
    """The fastest run of `families` whose mean quality meets the target, against our TTFT at
    its quality (on the alpha front) and our fastest point meeting the target."""
    ok = [s for s in summaries if s["family"] in families and s["quality_mean"] >= quality_target - QUALITY_TIE]
    if not ok:
        return None
    best = min(ok, key=lambda s: s["ttft_mean_s"])
    ours = ttft_at_quality(front, best["quality_mean"])
    return {
        "policy": best["policy"],
        "candidates": len(ok),
        "quality": best["quality_mean"],
        "ttft_s": best["ttft_mean_s"],
        "ours_ttft_s": ours,
        "ratio": None if not ours else best["ttft_mean_s"] / ours,
    }


def gap_closed(summaries: list[dict]) -> dict[str, float] | None:
    """Per policy, the share of the TTFT gap between `lru` and the `ideal` bound it closes
    (0 = lru, 1 = the bound, negative = slower than lru)."""
    lru = next((s for s in summaries if s["policy"] == "lru"), None)
    ideal = next((s for s in summaries if s["family"] == "ideal"), None)
    if lru is None or ideal is None or lru["ttft_mean_s"] <= ideal["ttft_mean_s"]:
        return None
    gap = lru["ttft_mean_s"] - ideal["ttft_mean_s"]
    return {s["policy"]: (lru["ttft_mean_s"] - s["ttft_mean_s"]) / gap for s in summaries}


def throughput_ratios(summaries: list[dict], quality_target: float) -> dict | None:
    """Max QPS within the p99 TTFT target (queueing.py): ours (the fastest-serving point of our
    curve that meets the quality target) against lru and the best baseline meeting it."""
    runs = [s for s in summaries if s.get("max_qps") is not None]
    lru = next((s for s in runs if s["policy"] == "lru"), None)
    meets = [s for s in runs if s["quality_mean"] >= quality_target - QUALITY_TIE]
    ours = [s for s in meets if s["family"] == "evicpress"]
    base = [s for s in meets if s["family"] in BASELINE_FAMILIES]
    if lru is None or not ours:
        return None
    best_ours = max(ours, key=lambda s: s["max_qps"])
    best_base = max(base, key=lambda s: s["max_qps"]) if base else None

    def ratio(a: dict, b: dict | None) -> float | None:
        return None if b is None or not b["max_qps"] else a["max_qps"] / b["max_qps"]

    return {
        "slo_p99_s": lru["slo_p99_s"],
        "ours": best_ours["policy"], "ours_qps": best_ours["max_qps"],
        "lru_qps": lru["max_qps"], "vs_lru": ratio(best_ours, lru),
        "best_baseline": None if best_base is None else best_base["policy"],
        "best_baseline_qps": None if best_base is None else best_base["max_qps"],
        "vs_best_baseline": ratio(best_ours, best_base),
    }
