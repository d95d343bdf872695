"""`evicctl bench`: build the scenario's catalog and trace, replay every policy, report.

Everything a run needs is chosen here from the options; the modules it calls are pure
(catalog, trace, policies, replay, compare) or render (report, plot).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from evicctl.errors import UsageError
from evicctl.replay.progress import progress_bar

# Defaults per scenario: arrivals that keep the modelled server under saturation (the
# replay does not model queueing: TTFT is a request's own service time).
DEFAULT_QPS = {"cpu-local": 0.5, "h200": 4.0}
ALPHA_CURVE = (1 / 16, 1 / 4, 1, 4, 16)  # multiples of the scenario's alpha: our TTFT-quality curve
OUTPUTS = ("table", "json", "jsonl", "csv")
WIDE = 150


@dataclass(frozen=True)
class BenchOptions:
    scenario: str = "cpu-local"
    policy: tuple[str, ...] = ()  # empty: every policy
    contexts: int = 10_000
    requests: int = 100_000
    qps: float | None = None
    zipf: float = 1.0
    seed: int = 0
    live: bool = False
    output: str = "table"
    plot: Path | None = None
    trace: Path | None = None
    sweep: str | None = None
    capacity: float | None = None  # all tiers together, fraction of the workload's raw KV
    drift: float = 0.0
    profile_noise: float = 0.0
    disk_bps: float | None = None
    alpha: float | None = None
    half_life_s: float | None = None  # access-rate half-life of the placer policies (default: the manager's)
    quality_target: float = 0.97  # issue 16: baselines are compared at this mean quality; `ideal` serves at it
    slo_p99_s: float | None = None  # queueing: the p99 TTFT target of max QPS (default: queueing.default_slo_p99_s)
    throughput: bool = True  # queueing: TTFT with waiting and max QPS per policy
    freq_estimator: str = "learned"  # the placer policies' access-rate estimator (evicctl.manager.freq.ESTIMATORS)
    warmup: float = 0.1
    profiles: Path | None = None
    jobs: int = 0  # worker processes for the policies; 0: one per core (at most 2)
    live_calibrate: bool = True  # live: also time prefills before serving (a second replay)
    live_open_loop: bool = False  # live: requests arrive on the clock at --qps (queueing check) instead of back to back

    def __post_init__(self) -> None:
        if self.output not in OUTPUTS:
            raise UsageError(f"unknown output {self.output!r}; valid: {', '.join(OUTPUTS)}")
        if self.contexts <= 0 or self.requests <= 0:
            raise UsageError("--contexts and --requests must be > 0")
        if not 0 <= self.warmup < 1:
            raise UsageError(f"warmup must be in [0, 1); got {self.warmup}")


def options_from(**kw) -> BenchOptions:
    """BenchOptions from keyword options as the CLI names them (None means the default)."""
    known = set(BenchOptions.__dataclass_fields__)
    unknown = sorted(set(kw) - known - {"policies"})
    if unknown:
        raise UsageError(f"unknown bench option(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
    if "policies" in kw:
        kw["policy"] = kw.pop("policies")
    kw = {k: v for k, v in kw.items() if v is not None}
    if "policy" in kw:
        kw["policy"] = (kw["policy"],) if isinstance(kw["policy"], str) else tuple(kw["policy"])
    for key in ("plot", "trace", "profiles"):
        if key in kw:
            kw[key] = Path(kw[key])
    return BenchOptions(**kw)


def prepare(opts: BenchOptions):
    """(scenario, catalog, trace) of a replay run."""
    from evicctl.replay.catalog import build_catalog
    from evicctl.replay.profiles import DEFAULT_PROFILES, load_profiles
    from evicctl.replay.scenario import load_scenario
    from evicctl.replay.trace import csv_trace, zipf_trace

    scenario = load_scenario(opts.scenario)
    if opts.capacity is not None:
        scenario = scenario.with_capacity(opts.capacity)
    if opts.disk_bps is not None:
        scenario = scenario.with_tier_bps("disk", opts.disk_bps)
    if opts.alpha is not None:
        scenario = replace(scenario, alpha=float(opts.alpha))
    profiles = load_profiles(opts.profiles or DEFAULT_PROFILES)
    catalog = build_catalog(scenario, profiles, opts.contexts, seed=opts.seed, noise_sd=opts.profile_noise)
    qps = opts.qps or DEFAULT_QPS.get(opts.scenario, 1.0)
    if opts.trace is not None:
        trace = csv_trace(opts.trace, opts.contexts, zipf=opts.zipf, seed=opts.seed,
                          query_tokens=scenario.query_tokens, context_ids=catalog.context_ids.tolist())
    else:
        trace = zipf_trace(opts.contexts, opts.requests, qps=qps, zipf=opts.zipf, seed=opts.seed,
                           query_tokens=scenario.query_tokens, drift=opts.drift)
    return scenario, catalog, trace, profiles


def policy_specs(opts: BenchOptions, alpha: float, catalog=None) -> list[str]:
    from evicctl.replay.baselines import best_single_codec
    from evicctl.replay.policies import default_policies

    if opts.policy:
        return list(dict.fromkeys(opts.policy))
    best = None if catalog is None else best_single_codec(catalog, opts.quality_target)
    return default_policies(opts.contexts, alpha, ALPHA_CURVE, best)


def replay_all(opts: BenchOptions, *, console=None, show_progress: bool = True) -> dict:
    """Replay every selected policy on one catalog and trace; the JSON-ready document."""
    from evicctl.replay.baselines import expand_best_fixed
    from evicctl.replay.compare import comparisons
    from evicctl.replay.parallel import replay_policies
    from evicctl.replay.policies import EXACT_MAX_CONTEXTS, make_policy

    scenario, catalog, trace, profiles = prepare(opts)
    specs = expand_best_fixed(policy_specs(opts, scenario.alpha, catalog), catalog.codecs)
    kw = {"quality_target": opts.quality_target, "freq_estimator": opts.freq_estimator}
    if opts.half_life_s is not None:
        kw["half_life_s"] = opts.half_life_s
    policies = [make_policy(s, alpha=scenario.alpha, **kw) for s in specs]  # fail fast on a bad name
    notes = []
    if not opts.policy and opts.contexts > EXACT_MAX_CONTEXTS:
        notes.append(f"exact (MILP per re-plan) left out above {EXACT_MAX_CONTEXTS} contexts; run --policy exact --policy evicpress --contexts 200 for the greedy-vs-exact gap")
    with progress_bar(console, show_progress) as bar:
        tasks = [bar.add_task(p.name, total=len(trace)) for p in policies]
        summaries = replay_policies(
            policies, catalog, trace, warmup=opts.warmup, jobs=_jobs(opts.jobs),
            progress=lambda k, n: bar.advance(tasks[k], n), after=_after_replay(opts, catalog, trace),
        )
    doc = {
        "scenario": scenario.to_json(),
        "catalog": catalog.to_json(),
        "profiles": profiles.to_json(),
        "trace": trace.to_json(),
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in opts.__dict__.items()},
        "runs": summaries,
        "comparisons": comparisons(summaries, quality_target=opts.quality_target),
        "notes": notes,
    }
    return doc


def _after_replay(opts: BenchOptions, catalog, trace):
    """What each run's summary gets beyond RunResult.summary: the codecs it served hits
    from, and the queueing fields (unless off)."""
    from functools import partial

    from evicctl.replay.compare import QUALITY_TIE

    throughput = _throughput(opts, catalog, trace)
    mix = partial(served_codecs, codecs=catalog.codecs)
    if throughput is None:
        return mix

    def after(result) -> dict:
        # a fixed codec under the quality target can be no equal-quality baseline (compare.
        # throughput_ratios): its max-QPS bisection, most of a 54-codec sweep's time, is skipped
        if result.family == "fixed" and result.quality_mean < opts.quality_target - QUALITY_TIE:
            return mix(result)
        return mix(result) | throughput(result)

    return after


SERVED_CODECS_SHOWN = 8


def served_codecs(result, codecs: tuple[str, ...]) -> dict:
    """{"served_codecs": {codec: share of the measured requests a cached copy in that codec
    served}}, the SERVED_CODECS_SHOWN most used (misses and recomputes are not counted)."""
    served = result.served_codec[result.measured]
    counts = np.bincount(served[served >= 0], minlength=len(codecs))
    top = np.argsort(-counts, kind="stable")[:SERVED_CODECS_SHOWN]
    return {"served_codecs": {codecs[k]: round(float(counts[k]) / max(1, len(served)), 4) for k in top if counts[k]}}


def _throughput(opts: BenchOptions, catalog, trace):
    """The queueing fields each run's summary gets (None: off)."""
    if not opts.throughput or opts.live:
        return None
    from functools import partial

    from evicctl.replay.queueing import default_slo_p99_s, throughput

    slo = opts.slo_p99_s or default_slo_p99_s(catalog, trace, int(opts.warmup * len(trace)))
    return partial(throughput, catalog=catalog, trace=trace, slo_p99_s=slo)


def _jobs(jobs: int) -> int:
    import os

    return jobs if jobs > 0 else max(1, min(2, len(os.sched_getaffinity(0))))
