"""Placer benchmark: time of the vectorised greedy, and how close it comes to the optimum.

1. Time for 100,000 contexts x 16 codecs x 3 tiers (random instances shaped like DESIGN §8:
   Llama-8B-sized KV, 1k-32k tokens, skewed frequencies): a cold start (every context new)
   and a steady-state re-plan (every context placed, 1% new), and building the cold plan's
   Move objects (a plan keeps its moves as arrays until iterated). Wall time (median) and CPU
   time of this process (the machine is shared: CPU time is what the placer itself costs).
   Then the manager's side of a plan: pricing 100,000 contexts into a PlacementProblem, with
   the per-context rows cached between plans against rebuilt (same run).
2. Baseline in the same run: the same greedy one move at a time from a heap, in plain Python
   (`exact.naive_place`), on a smaller instance, against the vectorised one on that instance.
3. Optimality: greedy vs scipy's MILP on 200 random small instances (mean / p95 / max gap),
   and for the 100,000-context instance the gap to a Lagrangian (LP) upper bound.
4. Incremental admission against a full re-plan per arrival (placer.admit_replay): contexts
   arrive one at a time onto tiers that hold a first batch; the total utility of both
   placements after every arrival, and the same with room beyond the free space unpriced
   (free room only). `--admission-only` runs this section alone.

    .venv/bin/python benchmarks/placer_bench.py [--contexts 100000] [--pricing-contexts 100000]
        [--naive-contexts 5000] [--instances 200] [--no-bound] [--admission-only]
"""

from __future__ import annotations

import argparse
import statistics
import time
from types import SimpleNamespace

import numpy as np
from rich.console import Console
from rich.table import Table

from evicctl.config import DEFAULT_CODECS
from evicctl.manager.placer.exact import lagrangian_bound, naive_place, random_problem, solve_exact
from evicctl.manager.placer.place import NEW, PlacementProblem, place

SMALL_CODECS = ("none", "int8", "int4", "snapkv@0.5", "knorm@0.5", "snapkv@0.25+int8")


def timed(fn, repeats: int) -> tuple[float, float, float, object]:
    """(median wall s, median CPU s, min CPU s, last result) after one warm-up."""
    result = fn()
    walls, cpus = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        result = fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return statistics.median(walls), statistics.median(cpus), min(cpus), result


def steady_state(problem: PlacementProblem, rng: np.random.Generator) -> PlacementProblem:
    """Every context where a cold plan put it, 1% of them new: a periodic re-plan."""
    plan = place(problem)
    current_tier = plan.tier_index.copy()
    current_codec = plan.codec_index.copy()
    fresh = rng.random(problem.n_contexts) < 0.01
    current_tier[fresh], current_codec[fresh] = NEW, -1
    fields = {f: getattr(problem, f) for f in problem.__dataclass_fields__}
    return PlacementProblem(**{**fields, "current_tier": current_tier, "current_codec": current_codec})


def time_table(args, rng) -> Table:
    table = Table(title=f"placer time, {args.contexts:,} contexts x {len(DEFAULT_CODECS)} codecs x 3 tiers")
    for col in ("case", "wall ms (median)", "CPU ms (median)", "CPU ms (min)", "moves", "feasible"):
        table.add_column(col, justify="right" if col != "case" else "left")
    cold = random_problem(rng, args.contexts, capacity_fractions=(0.05, 0.3, 0.4))
    for name, problem in (("cold start (all new)", cold), ("steady re-plan (1% new)", steady_state(cold, rng))):
        wall, cpu, cpu_min, plan = timed(lambda p=problem: place(p), args.repeats)
        table.add_row(name, f"{wall * 1e3:.1f}", f"{cpu * 1e3:.1f}", f"{cpu_min * 1e3:.1f}", f"{len(plan):,}", str(plan.feasible))
    # A plan keeps its moves as arrays; iterating builds Move objects (the manager iterates only
    # the moves it executes: admissions, all of a cold start's, are stored by store() itself).
    cold_plan = place(cold)
    wall, cpu, cpu_min, moves = timed(lambda: list(cold_plan), args.repeats)
    table.add_row("Move objects of the cold plan", f"{wall * 1e3:.1f}", f"{cpu * 1e3:.1f}", f"{cpu_min * 1e3:.1f}", f"{len(moves):,}", "")
    return table, cold


def pricing_table(args, rng) -> Table:
    """The manager's input to every plan: price_problem over its contexts. Rows cached on each
    context between plans, against the same contexts priced from scratch (same run)."""
    from evicctl.manager.costs import CostModel
    from evicctl.manager.placer.pricing import codec_sizes, price_problem
    from evicctl.manager.state import ContextState

    codecs, n = DEFAULT_CODECS, args.pricing_contexts
    nominal = codec_sizes(codecs, 4096, (32, 8, 128, 2, 0), 0)  # Llama-8B-shaped, scaled per context
    states = []
    for i, tokens in enumerate(rng.integers(1_000, 32_000, n).tolist()):
        ctx = ContextState(f"ctx{i}", tokens, tokens * (128 << 10))
        ctx.set_sizes({c: b * tokens // 4096 for c, b in nominal.items()})
        for c, q in zip(codecs[1:], rng.uniform(0.5, 1.0, len(codecs) - 1).tolist(), strict=True):
            ctx.keep_profile(c, q, 0.05, "teacher-forced")
        ctx.tier, ctx.codec, ctx.stored_bytes = ("cpu", "none", ctx.sizes["none"]) if i % 4 else ("disk", "int8", ctx.sizes["int8"])
        states.append(ctx)
    tiers = [SimpleNamespace(name="cpu", capacity_bytes=1 << 40, read_bps=5e10),
             SimpleNamespace(name="disk", capacity_bytes=1 << 44, read_bps=2e9)]  # fmt: skip

    def price():
        return price_problem(states, np.ones(n), codecs=codecs, tiers=tiers, cost_model=CostModel(), alpha=2.0,
                             query_tokens=64, floor_of=lambda s: 0.0)  # fmt: skip

    def price_from_scratch():
        for ctx in states:
            ctx.row_cache.clear()
        return price()

    table = Table(title=f"manager: pricing {n:,} contexts x {len(codecs)} codecs into a PlacementProblem")
    for col in ("case", "wall ms", "CPU ms (min)"):
        table.add_column(col, justify="right" if col != "case" else "left")
    slow_wall, _, slow_cpu, _ = timed(price_from_scratch, 1)
    fast_wall, _, fast_cpu, _ = timed(price, args.repeats)
    table.add_row("rows rebuilt per context (first plan after a start)", f"{slow_wall * 1e3:.0f}", f"{slow_cpu * 1e3:.0f}")
    table.add_row("rows cached on each context (every later plan)", f"{fast_wall * 1e3:.0f}", f"{fast_cpu * 1e3:.0f}")
    table.add_row("ratio", f"{slow_wall / fast_wall:.1f}x", f"{slow_cpu / max(fast_cpu, 1e-9):.1f}x")
    return table


def baseline_table(args, rng) -> Table:
    problem = random_problem(rng, args.naive_contexts, capacity_fractions=(0.05, 0.3, 0.4))
    fast_wall, fast_cpu, _, fast = timed(lambda: place(problem), args.repeats)
    slow_wall, slow_cpu, _, slow = timed(lambda: naive_place(problem), 1)
    table = Table(title=f"vectorised vs one-move-at-a-time greedy, {args.naive_contexts:,} contexts (same run)")
    for col in ("solver", "wall ms", "CPU ms", "total utility"):
        table.add_column(col, justify="right" if col != "solver" else "left")
    table.add_row("naive heap greedy (Python)", f"{slow_wall * 1e3:.1f}", f"{slow_cpu * 1e3:.1f}", f"{slow.total_utility:.6g}")
    table.add_row("vectorised greedy (place)", f"{fast_wall * 1e3:.1f}", f"{fast_cpu * 1e3:.1f}", f"{fast.total_utility:.6g}")
    table.add_row("ratio (naive / vectorised)", f"{slow_wall / fast_wall:.0f}x", f"{slow_cpu / max(fast_cpu, 1e-9):.0f}x", "")
    return table


def gap_table(args, rng, big: PlacementProblem) -> Table:
    gaps, exact_s, greedy_s = [], [], []
    for _ in range(args.instances):
        n = int(rng.integers(8, 25))
        problem = random_problem(rng, n, codecs=SMALL_CODECS)
        t = time.perf_counter()
        plan = place(problem)
        greedy_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        exact = solve_exact(problem)
        exact_s.append(time.perf_counter() - t)
        if exact.status != "optimal":
            continue
        gaps.append((exact.total_utility - plan.total_utility) / abs(exact.total_utility))
    gaps_pct = np.array(gaps) * 100
    table = Table(title=f"greedy vs exact (scipy MILP), {len(gaps)} random instances of 8-24 contexts x {len(SMALL_CODECS)} codecs x 3 tiers")
    for col in ("measure", "value"):
        table.add_column(col, justify="right" if col == "value" else "left")
    table.add_row("mean gap", f"{gaps_pct.mean():.2f} %")
    table.add_row("median gap", f"{np.median(gaps_pct):.2f} %")
    table.add_row("p95 gap", f"{np.percentile(gaps_pct, 95):.2f} %")
    table.add_row("max gap", f"{gaps_pct.max():.2f} %")
    # HiGHS stops at a relative MIP gap of 1e-4: closer than that counts as optimal
    table.add_row("greedy within 0.01 % of the optimum", f"{(gaps_pct < 1e-2).mean() * 100:.0f} %")
    table.add_row("greedy time (median)", f"{statistics.median(greedy_s) * 1e3:.2f} ms")
    table.add_row("MILP time (median)", f"{statistics.median(exact_s) * 1e3:.1f} ms")
    if args.bound:
        t = time.perf_counter()
        bound = lagrangian_bound(big, sweeps=2, steps=30)
        bound_s = time.perf_counter() - t
        greedy = place(big).total_utility
        table.add_row(f"gap to Lagrangian bound, {big.n_contexts:,} contexts", f"<= {(bound - greedy) / abs(bound) * 100:.2f} %")
        table.add_row("bound time", f"{bound_s:.1f} s")
    return table


def admission_table(args) -> Table:
    from evicctl.manager.placer.admit_replay import replay_admissions

    first, arrivals = args.admission_first, args.admission_arrivals
    table = Table(title=f"incremental admission vs a full re-plan per arrival: {first:,} contexts placed, "
                        f"{arrivals:,} arrive ({len(DEFAULT_CODECS)} codecs x 3 tiers, top tier 5% of raw bytes)")  # fmt: skip
    for col in ("seed", "admission", "mean utility gap", "worst ratio", "final ratio", "full re-plans", "overflowing"):
        table.add_column(col, justify="right" if col not in ("admission",) else "left")
    for seed in range(args.admission_seeds):
        p = random_problem(np.random.default_rng(100 + seed), first + arrivals, capacity_fractions=(0.05, 0.3, 0.4))
        for name, priced in (("room priced (shipped)", True), ("free room only", False)):
            r = replay_admissions(p, first, replan_every=args.admission_replan_every, priced=priced)
            table.add_row(str(seed), name, f"{r.mean_gap * 100:.3f} %", f"{r.ratio.min():.4f}", f"{r.ratio[-1]:.4f}",
                          f"{r.full_replans} / {arrivals}", str(r.overflowing))  # fmt: skip
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", type=int, default=100_000)
    parser.add_argument("--naive-contexts", type=int, default=5_000)
    parser.add_argument("--pricing-contexts", type=int, default=100_000)
    parser.add_argument("--instances", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--no-bound", dest="bound", action="store_false", help="skip the Lagrangian bound (slow)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--admission-only", action="store_true", help="run section 4 alone")
    parser.add_argument("--admission-first", type=int, default=1000)
    parser.add_argument("--admission-arrivals", type=int, default=500)
    parser.add_argument("--admission-seeds", type=int, default=3)
    parser.add_argument("--admission-replan-every", type=int, default=16, help="arrivals between timer re-plans")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    console = Console(width=160)
    if args.admission_only:
        console.print(admission_table(args))
        return
    table, big = time_table(args, rng)
    console.print(table)
    console.print(baseline_table(args, rng))
    console.print(pricing_table(args, np.random.default_rng(args.seed + 1)))  # leaves the other instances as they were
    console.print(gap_table(args, rng, big))
    console.print(admission_table(args))


if __name__ == "__main__":
    main()
