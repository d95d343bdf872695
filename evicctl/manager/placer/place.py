"""The placer: a pure function from contexts, profiles, tiers and pins to a plan (no I/O, no torch).

It follows EVICPRESS (DESIGN §1). Each context chooses one option, a (codec, tier) pair or
`dropped`; the utility of an option is U = freq * (alpha * quality - ttft_s). A new context gets
its best option. When a tier overflows, each context on it may compress harder in place or
move to a lower tier (an option that would grow it is excluded), and the cheapest utility loss
is applied until the tier fits; the tiers below are then relieved the same way, top down.
`dropped` is the option of last resort (pins exclude it).

"Cheapest" is measured per byte freed, the classic greedy for the multiple-choice knapsack:
ranking by loss alone frees a large busy context and a tiny idle one at the same price. The
sequential greedy (at each step take, over all contexts, the next move with the lowest loss per
byte) is computed without a Python loop per move: a context's successive cheapest moves follow
the lower convex hull of its (bytes freed, loss) points, so every hull segment of every
context is computed at once (`placer_hull`), the segments are sorted by slope, and the shortest
prefix that frees the excess is taken. This is the same sequence of moves the heap-based greedy
makes (`evicctl.manager.placer.exact.naive_place`, which the tests compare against).

The problem and plan types live in `placer_types`, the option arrays in `placer_options`; their
public names are importable from here too.
"""

from __future__ import annotations

import numpy as np

from evicctl.manager.placer.hull import hull_steps
from evicctl.manager.placer.options import (
    NOT_ALLOWED,
    Options,
    build_options,
    first_argmax,
    row_columns,
)
from evicctl.manager.placer.types import (
    DROPPED,
    DROPPED_TIER,
    KINDS,
    NEW,
    NO_PIN,
    REASON_ADMIT,
    REASON_CAPACITY,
    REASON_FLOOR,
    REASON_OPERATOR,
    REASON_PIN,
    REASON_UTILITY,
    REASONS,
    Move,
    PlacementProblem,
    Plan,
    derivable_matrix,
)

# Hysteresis of the timer rebalance. Without it a context at the edge of a full tier is
# promoted by one rebalance and demoted by the capacity pass of the next (or swaps places with
# a near-equal neighbour), every replan_s, each swap a copy and a delete. A rebalance moves a
# placed context only when its best option's value (alpha*quality - ttft_s, utility per unit
# of freq) beats where it is by both margins: relative (10% of its current predicted TTFT, well
# above the noise of probed bandwidths and fitted costs, which is relative to the TTFT) and
# absolute (in seconds: a gain this small is not worth a copy).
# Contexts marked `settled` (moved within the manager's rebalance_min_residence_s) stay put.
# The hysteresis guards against churn where a move displaces others: a rebalance still moves a
# context up into a faster tier's free room for any gain (`_promote_into_room`), so hot
# contexts do not sit on a slower tier while a faster one has room.
REBALANCE_GAIN_REL = 0.10
REBALANCE_GAIN_ABS_S = 0.002


def place(problem: PlacementProblem) -> Plan:
    """Plan every context's option (see the module docstring for the algorithm)."""
    opts = build_options(problem)
    opt, conflicts = initial_options(problem, opts)
    for t in range(len(problem.tiers)):
        _relieve_tier(problem, opts, opt, t)
    _rehome_undroppable(problem, opts, opt)
    return finish_plan(problem, opts, opt, conflicts)


def initial_options(p: PlacementProblem, opts: Options) -> tuple[np.ndarray, np.ndarray]:
    """Each context starts where it is if that is still allowed, else at its best allowed option."""
    n_tiers = len(p.tiers)
    opt = opts.current.copy()
    redo = opt < 0
    placed = np.flatnonzero(~redo)
    if len(placed):
        redo[placed] = ~_option_ok(p, opts, opt[placed], placed)
    rebalance_only = np.zeros(len(opt), dtype=bool)
    if p.rebalance:
        rebalance_only = (p.current_tier >= 0) & ~redo & ~p.settled
        redo |= rebalance_only
    rows = np.flatnonzero(redo)
    if len(rows) == 0:
        return opt, np.zeros(0, dtype=np.int64)
    # Best by value (utility per unit freq): the choice utility makes when freq > 0, and still
    # a sensible one for a context never looked up. Ties go to the faster tier, then to storing.
    best_codec = np.empty((n_tiers, len(rows)), dtype=np.int64)
    best_value = np.empty((n_tiers + 1, len(rows)), dtype=np.float32)
    for t in range(n_tiers):
        best_codec[t], best_value[t] = first_argmax(opts.allowed_at(t, rows))
        if len(rows) == p.n_contexts:  # relieving the tiers looks these up again
            opts.tier_best[t] = (best_codec[t], best_value[t])
    best_value[n_tiers] = opts.drop_allowed[rows]
    tier, top = first_argmax(best_value)
    found = top > -1e29
    chosen = np.where(
        tier == n_tiers,
        p.n_options - 1,
        best_codec[np.minimum(tier, n_tiers - 1), np.arange(len(rows))] * n_tiers + tier,
    )
    # A rebalance (not a constraint) moves a context only for a clear gain (hysteresis).
    cur = np.clip(opts.current[rows], 0, p.n_options - 2)
    cur_value = _value_at(opts, cur, rows)
    cur_c, cur_t = np.divmod(cur, n_tiers)
    cur_ttft_s = p.ttft_s.reshape(-1).take((cur_t * len(p.codecs) + cur_c) * p.n_contexts + rows)
    clear_gain = top > cur_value + np.maximum(REBALANCE_GAIN_ABS_S, REBALANCE_GAIN_REL * cur_ttft_s)
    move = found & (~rebalance_only[rows] | clear_gain)
    opt[rows[move]] = chosen[move]
    if rebalance_only.any():
        # Below the hysteresis, a move up into free room still pays: it displaces nobody, so
        # nothing can push it back down (the churn the hysteresis guards against).
        small = found & rebalance_only[rows] & ~move & (top > cur_value) & (chosen < p.n_options - 1)
        small &= chosen % n_tiers < cur_t
        if small.any():
            _promote_into_room(p, opt, rows[small], chosen[small], p.freq[rows[small]] * (top - cur_value)[small])
    # No allowed option (e.g. a pinned codec the stored copy cannot reach): stay put, say so.
    return opt, rows[~found]


def _promote_into_room(p: PlacementProblem, opt: np.ndarray, rows, target, gain) -> None:
    """Move contexts rows[k] up to flat option target[k] (gain[k]: utility gained) while the
    destination tier's free room lasts, the most gain per byte first; updates `opt`."""
    n, n_tiers, n_stored = p.n_contexts, len(p.tiers), p.n_options - 1
    stored = (opt >= 0) & (opt < n_stored)
    held = np.flatnonzero(stored)
    sizes = p.stored_bytes.reshape(-1).take((opt[held] // n_tiers) * n + held)
    room = p.capacity_bytes - np.bincount(opt[held] % n_tiers, weights=sizes, minlength=n_tiers).astype(np.int64)
    size = p.stored_bytes.reshape(-1).take((target // n_tiers) * n + rows)
    order = np.argsort(-gain / np.maximum(size, 1), kind="stable")
    dest = target % n_tiers
    for t in np.unique(dest):
        mine = order[dest[order] == t]
        take = mine[np.cumsum(size[mine]) <= room[t]]  # a prefix: the cumulative size only grows
        opt[rows[take]] = target[take]


def _option_ok(p: PlacementProblem, opts: Options, opt: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Whether context rows[k] may stay at flat option opt[k]."""
    n_tiers, n_stored = len(p.tiers), p.n_options - 1
    c, t = np.divmod(np.clip(opt, 0, n_stored - 1), n_tiers)
    stored_ok = opts.option_ok(c, t, rows)
    return np.where(opt == n_stored, opts.drop_ok[rows], (opt >= 0) & stored_ok)


def _relieve_tier(p: PlacementProblem, opts: Options, opt: np.ndarray, t: int) -> None:
    """Compress contexts on tier t or move them off it until it fits; updates `opt` in place."""
    n_tiers, n_stored = len(p.tiers), p.n_options - 1
    rows = np.flatnonzero((opt >= 0) & (opt < n_stored) & (opt % n_tiers == t))
    cur_codec = opt[rows] // n_tiers
    cur_bytes = p.stored_bytes.reshape(-1).take(cur_codec * p.n_contexts + rows)
    excess = int(cur_bytes.sum()) - int(p.capacity_bytes[t])
    if excess <= 0:
        return
    freed, loss, target = relief_candidates(p, opts, rows, t, cur_codec, cur_bytes)
    if p.rebalance:
        # Hysteresis: a context already where it is (not just promoted by this rebalance) costs
        # more to push out, so a newcomer displaces it only for a clear gain, not a near-tie
        # that the next rebalance would reverse.
        incumbent = (opt[rows] == opts.current[rows])[None, :] & (loss > 0)
        loss = np.where(incumbent, loss * (1 + REBALANCE_GAIN_REL) + REBALANCE_GAIN_ABS_S, loss).astype(np.float32)
    steps, cutoff = hull_steps(freed, loss, p.freq[rows], excess)
    if not steps:
        return
    seg_bytes = np.concatenate([b for _, _, b, _ in steps])
    seg_slope = np.concatenate([s for _, _, _, s in steps])
    taken = seg_slope < cutoff
    # Steps exactly at the cutoff (usually one) are taken in order until the tier fits.
    short = excess - int(seg_bytes[taken].sum())
    at = np.flatnonzero(seg_slope == cutoff)
    if short > 0 and len(at):
        cum = np.cumsum(seg_bytes[at])
        taken[at[: int(np.searchsorted(cum, short)) + 1]] = True
    # A context's steps are taken in hull order; applying step blocks in emission order leaves
    # each context at its last taken step.
    start = 0
    for row, col, _, _ in steps:
        block = taken[start : start + len(row)]
        start += len(row)
        opt[rows[row[block]]] = target.reshape(-1).take(col[block] * len(rows) + row[block])


def _rehome_undroppable(p: PlacementProblem, opts: Options, opt: np.ndarray) -> None:
    """A context that may not be dropped (a pinned codec) can be pushed down onto a tier it
    overflows; move such contexts, largest first, to the fastest tier with room left."""
    if opts.drop_ok.all():
        return  # every tier was relieved down to fitting: each context on it could leave
    n_tiers, n_stored = len(p.tiers), p.n_options - 1
    stored = (opt >= 0) & (opt < n_stored)
    tier = np.where(stored, opt % n_tiers, -1)
    everyone = np.arange(len(opt))
    sizes = p.stored_bytes.reshape(-1).take(np.where(stored, opt // n_tiers, 0) * len(opt) + everyone)
    used = np.bincount(tier[stored], weights=sizes[stored], minlength=n_tiers)
    over = np.flatnonzero(used > p.capacity_bytes)
    if len(over) == 0:
        return
    stuck = np.flatnonzero(np.isin(tier, over) & ~opts.drop_ok)
    for i in stuck[np.argsort(-sizes[stuck], kind="stable")]:
        t, c = int(tier[i]), int(opt[i] // n_tiers)
        if used[t] <= p.capacity_bytes[t]:
            continue
        for dest in range(n_tiers):
            room = used[dest] + sizes[i] <= p.capacity_bytes[dest]
            if dest != t and room and opts.codec_ok[c, i] and opts.tier_ok[dest, i]:
                opt[i] = c * n_tiers + dest
                used[t] -= sizes[i]
                used[dest] += sizes[i]
                break


def relief_candidates(p, opts, rows, t, cur_codec, cur_bytes):
    """Each row's points (bytes freed on tier t, value lost, flat option), [K, n] each.

    Row 0 leaves the tier: the best option below no larger than now (a move never grows a
    context), or dropped. Then one row per size class, compressing in place, ascending size
    (so descending bytes freed); a class no context can use is left out. freed < 0 marks no
    candidate.
    """
    n, n_tiers, n_codecs = len(rows), len(p.tiers), len(p.codecs)
    ar = np.arange(n)
    cur_value = opts.value.reshape(-1).take((t * n_codecs + cur_codec) * p.n_contexts + rows)
    lower = list(range(t + 1, n_tiers))
    exit_value = np.empty((len(lower) + 1, n), dtype=np.float32)
    exit_codec = np.empty((len(lower), n), dtype=np.int64)
    for k, low in enumerate(lower):
        exit_codec[k], exit_value[k] = _best_no_larger(p, opts, low, rows, cur_bytes)
    exit_value[-1] = opts.drop_allowed[rows]
    which, best_exit = first_argmax(exit_value)  # ties: faster tier, then storing over dropping
    chosen_tier = np.array(lower + [0])[which]
    exit_target = np.where(
        which == len(lower),
        p.n_options - 1,
        exit_codec[np.minimum(which, max(len(lower) - 1, 0)), ar] * n_tiers + chosen_tier
        if lower
        else 0,
    )
    n_rows = 1 + len(opts.size_classes)
    freed = np.empty((n_rows, n), dtype=np.int64)
    loss = np.empty((n_rows, n), dtype=np.float32)
    target = np.empty((n_rows, n), dtype=np.int64)
    freed[0] = np.where(best_exit > -1e29, cur_bytes, -1)
    np.subtract(cur_value, best_exit, out=loss[0])
    target[0] = exit_target
    k = 1
    here = opts.allowed_at(t, rows)  # [C, n]
    for members in opts.size_classes:
        size = row_columns(p.stored_bytes[members[0]], rows)  # the same for every member
        smaller = size < cur_bytes
        if not smaller.any():
            continue
        if len(members) == 1:
            best = here[members[0]]
            target[k] = members[0] * n_tiers + t
        else:
            pick, best = first_argmax(here[members])
            np.add(members[pick] * n_tiers, t, out=target[k])
        usable = smaller & (best > -1e29)
        if usable.any():
            freed[k] = np.where(usable, cur_bytes - size, -1)
            np.subtract(cur_value, best, out=loss[k])
            k += 1
    return freed[:k], loss[:k], target[:k]


def _best_no_larger(p, opts, t, rows, cur_bytes) -> tuple[np.ndarray, np.ndarray]:
    """(codec, allowed value) of each row's best option on tier t no larger than cur_bytes.

    When every context's best on t is known (`opts.tier_best`) and fits, that is the answer:
    the best of all codecs, allowed and no larger, is the best of those no larger. Only the
    rows where it is too large are searched again.
    """
    cached = opts.tier_best.get(t)
    if cached is None:
        return _search_no_larger(p, opts, t, rows, cur_bytes)
    codec, value = cached[0][rows], cached[1][rows]
    too_big = np.flatnonzero(p.stored_bytes.reshape(-1).take(codec * p.n_contexts + rows) > cur_bytes)
    if len(too_big):
        codec[too_big], value[too_big] = _search_no_larger(p, opts, t, rows[too_big], cur_bytes[too_big])
    return codec, value


def _search_no_larger(p, opts, t, rows, cur_bytes) -> tuple[np.ndarray, np.ndarray]:
    too_big = np.multiply(row_columns(p.stored_bytes, rows) > cur_bytes, NOT_ALLOWED, dtype=np.float32)
    return first_argmax(opts.allowed_at(t, rows) + too_big)


def finish_plan(p: PlacementProblem, opts: Options, opt: np.ndarray, conflicts: np.ndarray) -> Plan:
    n_tiers, n_stored, n = len(p.tiers), p.n_options - 1, p.n_contexts
    _keep_self_moves_put(p, opts, opt)
    dropped = opt == n_stored
    codec_index = np.where(dropped, -1, opt // n_tiers)
    tier_index = np.where(dropped, DROPPED, opt % n_tiers)
    everyone = np.arange(n)
    utility = p.freq * _value_at(opts, opt, everyone)
    stored_bytes = p.stored_bytes.reshape(-1).take(np.maximum(codec_index, 0) * n + everyone)
    used = np.bincount(tier_index[~dropped], weights=stored_bytes[~dropped], minlength=n_tiers)
    changed = np.flatnonzero(opt != opts.current)
    current = opts.current[changed]
    before = np.full(len(changed), np.nan)
    was = np.flatnonzero(current >= 0)  # nan for a new context: it had no utility
    if len(was):
        before[was] = p.freq[changed[was]] * _value_at(opts, current[was], changed[was])
    return Plan(
        problem=p,
        tier_index=tier_index,
        codec_index=codec_index,
        utility=utility,
        used_bytes=np.rint(used).astype(np.int64),
        changed=changed,
        reason_code=_reasons(p, opts, changed, before, utility[changed]),
        utility_before=before,
        conflicts=conflicts,
        options=opts,
    )


def _keep_self_moves_put(p: PlacementProblem, opts: Options, opt: np.ndarray) -> None:
    """A context whose chosen option names its current (tier, codec) stays where it is.

    Two flat options can name the same (tier, codec) when the codec list repeats a name; a
    move between them would be a copy onto the very key it then deletes (the only copy), so
    such a choice is reset to the current option and no move is planned. Updates `opt`."""
    n_tiers, n_stored = len(p.tiers), p.n_options - 1
    first = {}
    canon = np.array([first.setdefault(c, k) for k, c in enumerate(p.codecs)], dtype=np.int64)
    cur = opts.current
    both = (opt != cur) & (opt >= 0) & (opt < n_stored) & (cur >= 0) & (cur < n_stored)
    rows = np.flatnonzero(both)
    if len(rows) == 0:
        return
    new_c, new_t = np.divmod(opt[rows], n_tiers)
    cur_c, cur_t = np.divmod(cur[rows], n_tiers)
    same = (new_t == cur_t) & (canon[new_c] == canon[cur_c])
    opt[rows[same]] = cur[rows[same]]


def _value_at(opts: Options, opt: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """float64 value of flat option opt[k] for context rows[k]."""
    n_tiers, n_codecs, n = opts.value.shape
    n_stored = n_codecs * n_tiers
    c, t = np.divmod(np.clip(opt, 0, n_stored - 1), n_tiers)
    stored = opts.value.reshape(-1).take((t * n_codecs + c) * n + rows)
    return np.where(opt == n_stored, opts.drop_value[rows], stored).astype(np.float64)


def _reasons(p, opts, changed, before, after) -> np.ndarray:
    """Why each changed context moves; later rules override earlier ones."""
    reason = np.where(after >= before, REASON_UTILITY, REASON_CAPACITY)
    cur_t, cur_c = p.current_tier[changed], p.current_codec[changed]
    below_floor = np.zeros(len(changed), dtype=bool)
    stored = np.flatnonzero(cur_t >= 0)
    if len(stored):
        lower = p.quality_lower.reshape(-1).take(cur_c[stored] * p.n_contexts + changed[stored])
        below_floor[stored] = lower < p.quality_floor[changed[stored]]
    reason = np.where(below_floor & (p.pin_codec[changed] < 0), REASON_FLOOR, reason)
    pin_t, pin_c = p.pin_tier[changed], p.pin_codec[changed]
    breaks_pin = ((pin_t >= 0) & (cur_t != pin_t)) | ((pin_c >= 0) & (cur_c != pin_c))
    reason = np.where(breaks_pin, REASON_PIN, reason)
    forced = (p.force_tier[changed] != NO_PIN) | (p.force_codec[changed] != NO_PIN)
    evicted = (cur_t >= 0) & (cur_t < p.min_tier[changed])  # an evict raised min_tier
    reason = np.where(forced | evicted, REASON_OPERATOR, reason)
    reason = np.where(opts.current[changed] < 0, REASON_ADMIT, reason)
    return reason.astype(np.int64)


__all__ = [
    "DROPPED",
    "DROPPED_TIER",
    "KINDS",
    "NEW",
    "NOT_ALLOWED",
    "NO_PIN",
    "REASONS",
    "REBALANCE_GAIN_ABS_S",
    "REBALANCE_GAIN_REL",
    "Move",
    "Options",
    "PlacementProblem",
    "Plan",
    "build_options",
    "derivable_matrix",
    "place",
]
