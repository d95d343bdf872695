"""Admitting one new context against the current placement, without re-planning everyone.

A full plan prices and places every context (0.5-2 s at 100,000 contexts); an engine's store()
cannot wait for it. A new context instead takes the option a full plan would most likely give
it: each of its allowed options is worth its utility minus what making room for it costs the
contexts already there, and the best is taken. A full re-plan runs later in the background and
settles what this estimate got wrong (the manager asks for one at once when the admission
overflowed a tier).

What room costs: after each full plan, `room_prices` records per tier the moves the greedy
would make to free bytes there (every context's hull steps, as place._relieve_tier computes
them), cheapest per byte first, as cumulative (bytes freed, utility lost). Putting s bytes on a
tier that is already `over` bytes over its capacity costs loss(over + s) - loss(over): the
greedy's own price of that room (zero while it fits in the free space). The contexts pushed
down fill the next tier; that cascade is not priced, the background re-plan settles it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from evicctl.manager.placer.hull import hull_steps
from evicctl.manager.placer.options import build_options
from evicctl.manager.placer.place import finish_plan, relief_candidates
from evicctl.manager.placer.types import DROPPED, PlacementProblem, Plan


@dataclass(frozen=True, eq=False)
class RoomPrice:
    """One tier's price of room: freeing cum_bytes[k] bytes loses cum_loss[k] utility."""

    cum_bytes: np.ndarray  # [S] int64, ascending
    cum_loss: np.ndarray  # [S] float64, ascending

    def loss(self, need: int) -> float:
        """Utility the greedy's cheapest moves lose to free `need` bytes. Beyond what the
        contexts of the last plan can free, the rest is priced at nothing: contexts admitted
        since can move too (the newcomer itself among them), and the re-plan decides. Erring
        this way is safe: a context admitted too high can still go anywhere, one admitted
        compressed or dropped cannot come back."""
        if need <= 0 or len(self.cum_bytes) == 0:
            return 0.0
        k = int(np.searchsorted(self.cum_bytes, need))  # the first step with enough freed
        return float(self.cum_loss[min(k, len(self.cum_loss) - 1)])


NO_ROOM = RoomPrice(np.zeros(0, dtype=np.int64), np.zeros(0))  # nothing to move off: room costs nothing
# Room beyond the free space not to be had at any price (for comparisons: free room only).
UNAVAILABLE = RoomPrice(np.zeros(1, dtype=np.int64), np.array([math.inf]))


def room_prices(plan: Plan) -> tuple[RoomPrice, ...]:
    """Per tier, the price of room after `plan` (see the module docstring). O(N); the manager
    computes it in the background after each full plan it executes."""
    p = plan.problem
    opts = plan.options if plan.options is not None else build_options(p)
    n, n_tiers = p.n_contexts, len(p.tiers)
    out = []
    for t in range(n_tiers):
        rows = np.flatnonzero(plan.tier_index == t)
        if len(rows) == 0:
            out.append(NO_ROOM)
            continue
        cur_codec = plan.codec_index[rows]
        cur_bytes = p.stored_bytes.reshape(-1).take(cur_codec * n + rows)
        freed, loss, _ = relief_candidates(p, opts, rows, t, cur_codec, cur_bytes)
        steps, _ = hull_steps(freed, loss, p.freq[rows], int(cur_bytes.sum()))
        if not steps:
            out.append(NO_ROOM)
            continue
        step_bytes = np.concatenate([b for _, _, b, _ in steps])
        slope = np.concatenate([s for _, _, _, s in steps])
        order = np.argsort(slope, kind="stable")
        out.append(
            RoomPrice(np.cumsum(step_bytes[order]), np.cumsum(slope[order] * step_bytes[order]))
        )
    return tuple(out)


def admission_plan(
    p: PlacementProblem, over_bytes, prices: tuple[RoomPrice, ...] | None
) -> Plan | None:
    """The plan that admits the one context of `p` (current NEW): its allowed option of the
    highest utility net of the room it takes (see the module docstring).

    over_bytes: [T] bytes each tier holds beyond its capacity now (negative: free room);
    prices: room_prices of the last full plan, or None when there is none yet (after a start):
    room is then priced at nothing (RoomPrice.loss says why that errs the safe way), the
    context takes its best option as a full plan would at first, and the full re-plan its
    overflow asks for relieves the tier. None when no option is allowed (the caller re-plans
    in full).
    """
    if p.n_contexts != 1:
        raise ValueError(f"admission_plan admits one context; got {p.n_contexts}")
    opts = build_options(p, size_classes=False)
    n_tiers, n_codecs = len(p.tiers), len(p.codecs)
    one = np.zeros(1, dtype=np.int64)
    allowed = np.stack([opts.allowed_at(t, one)[:, 0] for t in range(n_tiers)])  # [T, C]
    freq = float(p.freq[0])
    sizes = p.stored_bytes[:, 0].astype(np.int64)
    net = np.full(n_tiers * n_codecs + 1, -np.inf)
    for t in range(n_tiers):
        over = int(over_bytes[t])
        price = prices[t] if prices is not None and t < len(prices) else NO_ROOM
        already = price.loss(over)
        for c in range(n_codecs):
            if allowed[t, c] <= -1e29 or sizes[c] > p.capacity_bytes[t]:
                continue  # not allowed, or larger than the tier: it never fits there
            need = over + int(sizes[c])
            cost = price.loss(need) - already if need > 0 else 0.0
            net[t * n_codecs + c] = freq * float(allowed[t, c]) - cost
    if opts.drop_ok[0]:
        net[-1] = freq * float(opts.drop_value[0])
    best = int(np.argmax(net))  # ties: the faster tier, then the earlier codec, then storing
    if not np.isfinite(net[best]):
        return None
    option = (
        n_tiers * n_codecs
        if best == len(net) - 1
        else (best % n_codecs) * n_tiers + best // n_codecs
    )
    return finish_plan(p, opts, np.array([option], dtype=np.int64), np.zeros(0, dtype=np.int64))


def overflows(plan: Plan, over_bytes) -> bool:
    """Whether admitting as `plan` says puts a tier over its capacity."""
    t = int(plan.tier_index[0])
    return (
        t != DROPPED
        and int(over_bytes[t]) + int(plan.problem.stored_bytes[plan.codec_index[0], 0]) > 0
    )
