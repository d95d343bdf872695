"""Robustness sweeps: how our gains move with the workload, the hardware and the profiles.

Each sweep varies one thing and replays a reduced policy set at every value:
- `zipf`: popularity skew 0.8-1.2;
- `disk`: the disk tier's read bandwidth, x0.1 to x10 of the scenario's;
- `capacity`: all tiers together from 5% of the workload's raw KV to everything fitting
  (12x: the top tier alone holds every context whole);
- `drift`: the share of the popularity ranking reshuffled at each of 10 phase boundaries;
- `noise`: Gaussian noise (sd) added to the quality estimates the placer sees (the truth
  that requests get is unchanged): the placer is only as good as its profiles;
- `half-life`: the half-life of the access rate the placer weighs options by (the manager's
  freq_half_life_s, 300 s by default), against the workload's time scale.
A ratio under 1 means evicpress lost to that baseline at that point.
"""

from __future__ import annotations

from dataclasses import replace

from rich.console import Console
from rich.table import Table

from evicctl.errors import UnknownNameError

SWEEPS = {
    "zipf": (0.8, 0.9, 1.0, 1.1, 1.2),
    "disk": (0.1, 0.3, 1.0, 3.0, 10.0),  # multiples of the scenario's disk read bandwidth
    "capacity": (0.05, 0.1, 0.3, 1.0, 3.0, 12.0),
    "drift": (0.0, 0.1, 0.3, 0.6, 1.0),
    "noise": (0.0, 0.05, 0.1, 0.2, 0.3),
    "half-life": (30.0, 300.0, 3000.0, 30000.0),
}
SWEEP_POLICIES = ("prefill", "lru", "placement-only", "fixed:int8", "fixed:int4", "fixed:snapkv@0.25", "fixed:snapkv@0.5",
                  "arc", "gdsf", "tinylfu", "arc:int4", "gdsf:int4", "tinylfu:int4", "ideal")
SWEEP_ALPHAS = (1 / 4, 1, 4)
SWEEP_DEFAULTS = {"contexts": 2000, "requests": 20_000}


def run_sweep(opts, *, console=None, show_progress: bool = True) -> dict:
    from evicctl.replay.run import replay_all
    from evicctl.replay.scenario import load_scenario

    kind = opts.sweep
    if kind not in SWEEPS:
        raise UnknownNameError("sweep", kind, list(SWEEPS))
    base = opts
    if opts.contexts == 10_000 and opts.requests == 100_000:  # the replay defaults: sweep smaller
        base = replace(opts, **SWEEP_DEFAULTS)
    scenario = load_scenario(opts.scenario)
    alpha = opts.alpha or scenario.alpha
    policies = opts.policy or (*SWEEP_POLICIES, *_best_codec_baselines(base),
                               *(f"evicpress@{alpha * m:g}" for m in SWEEP_ALPHAS),
                               f"evicpress-nokvzip@{alpha:g}")  # max QPS without KVzip's pass, at the target
    points = []
    for value in SWEEPS[kind]:
        point = replace(base, policy=tuple(policies), sweep=None, plot=None, **_setting(kind, value, scenario))
        doc = replay_all(point, console=console, show_progress=show_progress)
        points.append({"value": value, "runs": doc["runs"], "comparisons": doc["comparisons"]})
    return {
        "mode": "sweep",
        "sweep": kind,
        "scenario": scenario.to_json(),
        "options": {k: str(v) if v is not None and not isinstance(v, int | float | str | tuple) else v
                    for k, v in base.__dict__.items()},
        "points": points,
        "summary": [_row(p) for p in points],
    }


def _best_codec_baselines(opts) -> tuple[str, ...]:
    """fixed, tinylfu and gdsf at the best single codec of the measured menu (baselines.
    best_single_codec, from the sweep's base point), when it is not int4 or int8."""
    from evicctl.replay.baselines import BASELINE_CODECS, best_single_codec
    from evicctl.replay.run import prepare

    best = best_single_codec(prepare(opts)[1], opts.quality_target)
    if best is None or best in BASELINE_CODECS:
        return ()
    return tuple(f"{kind}:{best}" for kind in ("fixed", "tinylfu", "gdsf"))


def _setting(kind: str, value: float, scenario) -> dict:
    if kind == "zipf":
        return {"zipf": value}
    if kind == "disk":
        disk = next(t for t in scenario.tiers if t.name == "disk")
        return {"disk_bps": disk.read_bps * value}
    if kind == "capacity":
        return {"capacity": value}
    if kind == "drift":
        return {"drift": value}
    if kind == "half-life":
        return {"half_life_s": value}
    return {"profile_noise": value}


def _row(point: dict) -> dict:
    cmp = point["comparisons"]
    runs = {r["policy"]: r for r in point["runs"]}
    ours = [r for r in point["runs"] if r["family"] == "evicpress"]
    best = min(ours, key=lambda r: r["ttft_mean_s"]) if ours else None
    return {
        "value": point["value"],
        "vs_lru": (cmp.get("vs_lru") or {}).get("ratio"),
        "vs_prefill": (cmp.get("vs_prefill") or {}).get("ratio"),
        "vs_fixed": cmp.get("vs_fixed_range"),
        "placement_vs_lru": cmp.get("placement_vs_lru"),
        "vs_best_baseline": (cmp.get("best_baseline") or {}).get("ratio"),
        "best_baseline": (cmp.get("best_baseline") or {}).get("policy"),
        "placement_vs_arc": _ratio_of(runs, "arc", "placement-only"),
        "placement_vs_tinylfu": _ratio_of(runs, "tinylfu", "placement-only"),
        "qps_vs_lru": (cmp.get("throughput") or {}).get("vs_lru"),
        "lru_ttft_s": runs.get("lru", {}).get("ttft_mean_s"),
        "ours_fastest_ttft_s": None if best is None else best["ttft_mean_s"],
        "ours_fastest_quality": None if best is None else best["quality_mean"],
    }


def _ratio_of(runs: dict, base: str, ours: str) -> float | None:
    if base not in runs or ours not in runs or runs[ours]["ttft_mean_s"] <= 0:
        return None
    return runs[base]["ttft_mean_s"] / runs[ours]["ttft_mean_s"]


def print_sweep(doc: dict, console: Console) -> None:
    table = Table(title=f"robustness: {doc['sweep']} ({doc['scenario']['name']}); TTFT ratios, >1 = evicpress faster")
    for col in (doc["sweep"], "vs lru (<3% loss)", "vs prefill (<3% loss)", "vs fixed (equal quality)",
                "placement-only vs lru", "vs arc", "vs tinylfu", "vs best baseline", "QPS vs lru", "lru TTFT", "ours fastest (quality)"):
        table.add_column(col, justify="right")

    def r(x):
        if x is None:
            return "-"
        style = "red" if x < 1 else "green"
        return f"[{style}]{x:.2f}x[/]"

    for row in doc["summary"]:
        fixed = row["vs_fixed"]
        table.add_row(
            f"{row['value']:g}",
            r(row["vs_lru"]),
            r(row["vs_prefill"]),
            "-" if not fixed else f"{r(fixed[0])} .. {r(fixed[1])}",
            r(row["placement_vs_lru"]),
            r(row.get("placement_vs_arc")),
            r(row.get("placement_vs_tinylfu")),
            "-" if row.get("vs_best_baseline") is None else f"{r(row['vs_best_baseline'])} ({row['best_baseline']})",
            r(row.get("qps_vs_lru")),
            "-" if row["lru_ttft_s"] is None else f"{row['lru_ttft_s'] * 1000:.0f} ms",
            "-" if row["ours_fastest_ttft_s"] is None else f"{row['ours_fastest_ttft_s'] * 1000:.0f} ms ({row['ours_fastest_quality']:.3f})",
        )
    console.print(table)
