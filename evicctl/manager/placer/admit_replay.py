"""Placement quality of incremental admission against a full re-plan per admission, on a replay.

Contexts of one problem arrive one at a time onto tiers that already hold a first batch.
`full`: every arrival re-plans everyone (the placer as store() used it before admission was
incremental). `incremental`: every arrival is admitted alone (placer.admit) against the
current placement and the room prices of the last full plan; a full re-plan follows when the
admission overflowed a tier (the manager's control thread does that at once) and otherwise
every `replan_every` arrivals (the manager's timer). After each arrival both placements are
feasible, and their total utilities are compared.

Used by benchmarks/placer_bench.py and tests/manager/test_admission.py.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from evicctl.manager.placer.admit import UNAVAILABLE, admission_plan, overflows, room_prices
from evicctl.manager.placer.options import build_options
from evicctl.manager.placer.place import place
from evicctl.manager.placer.types import DROPPED, NEW, PlacementProblem

_PER_CONTEXT = {"context_ids", "freq", "tokens", "miss_ttft_s", "current_tier", "current_codec", "pin_tier",
                "pin_codec", "quality_floor", "force_tier", "force_codec", "min_tier", "settled"}  # fmt: skip
_PER_OPTION = {
    "stored_bytes",
    "quality",
    "quality_lower",
    "profiled",
    "ttft_s",
}  # context axis last


def select(
    p: PlacementProblem, rows: np.ndarray, tier: np.ndarray, codec: np.ndarray
) -> PlacementProblem:
    """The problem of contexts `rows` of `p`, each at (tier, codec) (NEW for a new one)."""
    args = {}
    for f in fields(p):
        value = getattr(p, f.name)
        if f.name in _PER_CONTEXT:
            value = value[rows]
        elif f.name in _PER_OPTION:
            value = np.take(value, rows, axis=-1)
        args[f.name] = value
    args["current_tier"], args["current_codec"] = tier, codec
    return PlacementProblem(**args)


@dataclass(frozen=True)
class ReplayResult:
    ratio: np.ndarray  # [arrivals] total utility, incremental / full, after each arrival
    full_replans: int  # full re-plans the incremental policy ran (the full policy: one per arrival)
    overflowing: int  # admissions that overflowed a tier (each followed by a full re-plan)

    @property
    def mean_gap(self) -> float:
        """Mean relative utility shortfall of incremental admission (negative: it did better)."""
        return float(np.mean(1.0 - self.ratio))


def replay_admissions(
    p: PlacementProblem, first: int, replan_every: int = 16, *, priced: bool = True
) -> ReplayResult:
    """Place contexts [0, first) with one cold plan, then admit the rest one at a time under
    both policies (see the module docstring). priced False: room beyond the free space is
    priced as unavailable (a new context takes the best option that fits: the comparison that
    shows what pricing room is worth). Utility is priced in `p`'s own terms; with
    negative utilities (every option worse than nothing) the ratio reads inverted, so `p`
    should have positive ones (random_problem's have)."""
    n = p.n_contexts
    value = _values(p)
    tier = np.full(n, NEW, dtype=np.int64)
    codec = np.full(n, -1, dtype=np.int64)
    cold = place(select(p, np.arange(first), tier[:first], codec[:first]))
    tier[:first], codec[:first] = cold.tier_index, cold.codec_index
    full = (tier.copy(), codec.copy())
    inc = (tier.copy(), codec.copy())
    no_room = (UNAVAILABLE,) * len(p.tiers)
    prices = room_prices(cold) if priced else no_room
    ratios, replans, overflowing = [], 0, 0
    for k in range(first, n):
        present = np.arange(k + 1)
        plan = place(select(p, present, full[0][present], full[1][present]))
        full[0][present], full[1][present] = plan.tier_index, plan.codec_index
        one = np.array([k])
        over = _used(p, *inc, k) - p.capacity_bytes
        admitted = admission_plan(select(p, one, tier[one], codec[one]), over, prices)
        inc[0][k], inc[1][k] = admitted.tier_index[0], admitted.codec_index[0]
        pressure = overflows(admitted, over)
        overflowing += pressure
        if pressure or (k - first + 1) % replan_every == 0:
            plan = place(select(p, present, inc[0][present], inc[1][present]))
            inc[0][present], inc[1][present] = plan.tier_index, plan.codec_index
            prices = room_prices(plan) if priced else no_room
            replans += 1
        ratios.append(_total(p, value, *inc, k) / _total(p, value, *full, k))
    return ReplayResult(np.array(ratios), replans, overflowing)


def _values(p: PlacementProblem) -> tuple[np.ndarray, np.ndarray]:
    opts = build_options(p)
    return opts.value, opts.drop_value


def _total(p, value, tier, codec, k) -> float:
    rows = np.arange(k + 1)
    stored_value, drop_value = value
    t, c = tier[rows], codec[rows]
    stored = t >= 0
    per = np.where(stored, stored_value[np.maximum(t, 0), np.maximum(c, 0), rows], drop_value[rows])
    return float((p.freq[rows] * per).sum())


def _used(p, tier, codec, k) -> np.ndarray:
    rows = np.arange(k)
    t, c = tier[rows], codec[rows]
    stored = (t >= 0) & (t != DROPPED)
    nbytes = p.stored_bytes[np.maximum(c, 0), rows]
    return np.bincount(t[stored], weights=nbytes[stored], minlength=len(p.tiers)).astype(np.int64)
