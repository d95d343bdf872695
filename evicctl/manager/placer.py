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
context is computed at once (vectorised gift wrapping), the segments are sorted by slope, and
the shortest prefix that frees the excess is taken. This is the same sequence of moves the
heap-based greedy makes (`evicctl.manager.exact.naive_place`, which the tests compare against).

Indices: contexts i in [0, N); codecs c in [0, C) (names in `codecs`); tiers t in [0, T),
fastest first. An option is o = c * T + t, and o = C * T is `dropped`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from functools import cached_property

import numpy as np

from evicctl.manager.utility import MISS_QUALITY

NEW = -1  # current_tier of a context not yet placed (the manager holds its full KV)
DROPPED = -2  # current_tier / force_tier / final tier of a context with no stored copy
NO_PIN = -1
DROPPED_TIER = "dropped"  # tier name of the dropped option in plans and in the store

REASONS = ("admit", "capacity", "utility", "pin", "quality-floor", "operator")
_ADMIT, _CAPACITY, _UTILITY, _PIN, _FLOOR, _OPERATOR = range(len(REASONS))


@dataclass(frozen=True, eq=False)
class PlacementProblem:
    """Everything the placer needs, as numpy arrays. Optional arrays default to "no constraint".

    Shapes: N contexts, C codecs, T tiers. Per-option arrays are option-major ([C, N], [T, C, N]):
    the greedy works on one codec or tier of every context at a time, and contiguous rows of N
    keep each of its passes a few ms at N = 100,000. Bytes int64, times seconds, freq accesses/s.
    """

    context_ids: np.ndarray  # [N] str
    freq: np.ndarray  # [N] decayed access rate
    tokens: np.ndarray  # [N] tokens of the full context
    codecs: tuple[str, ...]  # [C]
    tiers: tuple[str, ...]  # [T], fastest first
    capacity_bytes: np.ndarray  # [T]
    stored_bytes: np.ndarray  # [C, N] bytes of each context under each codec (same on every tier)
    quality: np.ndarray  # [C, N] estimate in [0, 1]
    ttft_s: np.ndarray  # [T, C, N] predicted TTFT of a query served from that option (float32 is enough)
    miss_ttft_s: np.ndarray  # [N] TTFT of a miss (full prefill)
    alpha: float  # seconds of TTFT one unit of quality is worth
    quality_lower: np.ndarray | None = None  # [C, N] lower bound the floor is checked against
    profiled: np.ndarray | None = None  # [C, N] bool; an unprofiled codec is never chosen (except none)
    current_tier: np.ndarray | None = None  # [N] tier index, NEW or DROPPED
    current_codec: np.ndarray | None = None  # [N] codec index; -1 when NEW or DROPPED
    pin_tier: np.ndarray | None = None  # [N] tier index or NO_PIN
    pin_codec: np.ndarray | None = None  # [N] codec index or NO_PIN
    quality_floor: np.ndarray | None = None  # [N] minimum quality_lower of a stored option
    force_tier: np.ndarray | None = None  # [N] operator one-shot: tier index, DROPPED or NO_PIN
    force_codec: np.ndarray | None = None  # [N] operator one-shot: codec index or NO_PIN
    min_tier: np.ndarray | None = None  # [N] tiers faster than this are excluded (after an evict)
    derivable: np.ndarray | None = None  # [C, C] bool: codec b can be made from a copy at codec a
    rebalance: bool = False  # re-choose every context from its best option, not from where it is

    def __post_init__(self) -> None:
        n, c, t = len(self.context_ids), len(self.codecs), len(self.tiers)
        defaults = {
            "quality_lower": lambda: np.asarray(self.quality, dtype=np.float64),
            "profiled": lambda: np.ones((c, n), dtype=bool),
            "current_tier": lambda: np.full(n, NEW, dtype=np.int64),
            "current_codec": lambda: np.full(n, -1, dtype=np.int64),
            "pin_tier": lambda: np.full(n, NO_PIN, dtype=np.int64),
            "pin_codec": lambda: np.full(n, NO_PIN, dtype=np.int64),
            "quality_floor": lambda: np.zeros(n),
            "force_tier": lambda: np.full(n, NO_PIN, dtype=np.int64),
            "force_codec": lambda: np.full(n, NO_PIN, dtype=np.int64),
            "min_tier": lambda: np.zeros(n, dtype=np.int64),
            "derivable": lambda: derivable_matrix(self.codecs),
        }
        for name, make in defaults.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, make())
        shapes = {
            "freq": (n,), "tokens": (n,), "capacity_bytes": (t,), "stored_bytes": (c, n),
            "quality": (c, n), "ttft_s": (t, c, n), "miss_ttft_s": (n,), "quality_lower": (c, n),
            "profiled": (c, n), "current_tier": (n,), "current_codec": (n,), "pin_tier": (n,),
            "pin_codec": (n,), "quality_floor": (n,), "force_tier": (n,), "force_codec": (n,),
            "min_tier": (n,), "derivable": (c, c),
        }  # fmt: skip
        for f in fields(self):
            if f.name in shapes:
                arr = np.asarray(getattr(self, f.name))
                if arr.shape != shapes[f.name]:
                    raise ValueError(f"{f.name} must have shape {shapes[f.name]}; got {arr.shape}")
                object.__setattr__(self, f.name, arr)
        if t == 0 or c == 0:
            raise ValueError("a placement problem needs at least one tier and one codec")

    @property
    def n_contexts(self) -> int:
        return len(self.context_ids)

    @property
    def n_options(self) -> int:
        return len(self.codecs) * len(self.tiers) + 1


@dataclass(frozen=True)
class Move:
    """One change of one context's placement. from_tier is None for a new context."""

    context_id: str
    from_tier: str | None
    from_codec: str | None
    to_tier: str  # a tier name or "dropped"
    to_codec: str | None  # None when dropped
    reason: str  # one of REASONS
    utility_before: float | None
    utility_after: float
    kind: str  # admit | compress | demote | promote | move | drop
    to_bytes: int  # stored bytes after the move (0 when dropped)

    def to_json(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True, eq=False)
class Plan:
    """The placer's answer: the final option of every context and the moves to get there.

    Iterating a plan yields its moves (materialised lazily: admitting 100,000 contexts makes
    100,000 Move objects, which costs more than planning them).
    """

    problem: PlacementProblem
    tier_index: np.ndarray  # [N] final tier, DROPPED for dropped
    codec_index: np.ndarray  # [N] final codec, -1 for dropped
    utility: np.ndarray  # [N] utility of the final option
    used_bytes: np.ndarray  # [T] bytes on each tier after the plan
    changed: np.ndarray  # [M] indices of the contexts that move
    reason_code: np.ndarray  # [M] index into REASONS
    utility_before: np.ndarray  # [M] utility of the current option (nan when new)
    conflicts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # contexts whose constraints no option meets

    @property
    def overflow_bytes(self) -> np.ndarray:
        """[T] bytes over capacity after the plan (all zero when it fits)."""
        return np.maximum(0, self.used_bytes - self.problem.capacity_bytes)

    @property
    def feasible(self) -> bool:
        return not self.overflow_bytes.any() and len(self.conflicts) == 0

    @property
    def total_utility(self) -> float:
        return float(self.utility.sum())

    @cached_property
    def moves(self) -> tuple[Move, ...]:
        p, idx = self.problem, self.changed
        to_codec = self.codec_index[idx]
        to_bytes = np.where(to_codec >= 0, p.stored_bytes[np.maximum(to_codec, 0), idx], 0)
        columns = zip(
            p.context_ids[idx].tolist(),
            p.current_tier[idx].tolist(),
            p.current_codec[idx].tolist(),
            self.tier_index[idx].tolist(),
            to_codec.tolist(),
            self.reason_code.tolist(),
            self.utility_before.tolist(),
            self.utility[idx].tolist(),
            to_bytes.tolist(),
            strict=True,
        )
        return tuple(self._move(*row) for row in columns)

    def __iter__(self):
        return iter(self.moves)

    def __len__(self) -> int:
        return len(self.changed)

    def __getitem__(self, k: int) -> Move:
        return self.moves[k]

    def option_of(self, i: int) -> tuple[str, str | None]:
        """(tier name, codec name) of context index i after the plan; ("dropped", None) if dropped."""
        return self._names(int(self.tier_index[i]), int(self.codec_index[i]))

    def _names(self, t: int, c: int) -> tuple[str | None, str | None]:
        if t == NEW:
            return None, None
        if t == DROPPED:
            return DROPPED_TIER, None
        return self.problem.tiers[t], self.problem.codecs[c]

    def _move(self, context_id, from_t, from_c, to_t, to_c, reason, before, after, to_bytes) -> Move:
        from_tier, from_codec = self._names(from_t, from_c)
        to_tier, to_codec = self._names(to_t, to_c)
        return Move(
            context_id=str(context_id),
            from_tier=from_tier,
            from_codec=from_codec,
            to_tier=to_tier,
            to_codec=to_codec,
            reason=REASONS[reason],
            utility_before=None if before != before else before,  # nan: a new context
            utility_after=after,
            kind=_kind(from_t, to_t),
            to_bytes=to_bytes,
        )


def _kind(from_t: int, to_t: int) -> str:
    if from_t == NEW:
        return "admit"
    if to_t == DROPPED:
        return "drop"
    if from_t == to_t:
        return "compress"
    if from_t >= 0 and to_t > from_t:
        return "demote"
    return "promote" if from_t > to_t else "move"


# --- codec names -> which codecs a stored copy can still reach -----------------------------

_DROP = re.compile(r"^(?P<scorer>[a-z_]+)@(?P<ratio>[0-9.]+)$")


def _parse(name: str) -> tuple[str | None, float, int]:
    """(scorer, fraction removed, quant bits; 16 = unquantized) of a codec name."""
    scorer, ratio, bits = None, 0.0, 16
    for part in name.split("+"):
        m = _DROP.match(part)
        if m:
            scorer, ratio = m["scorer"], float(m["ratio"])
        elif part.startswith("int") and part[3:].isdigit():
            bits = int(part[3:])
        elif part != "none":
            return "?" + name, 0.0, 16  # unknown structure: reachable only from none and itself
    return scorer, ratio, bits


def derivable_matrix(codecs) -> np.ndarray:
    """[C, C] bool: derivable[a, b] iff a copy stored at codec a can be recompressed to b.

    Dropped tokens and lost precision cannot come back, so from a stored copy only codecs at
    least as lossy in every part are reachable: the same scorer removing at least as much, and
    no more quantization bits. From `none` (the full KV) every codec is reachable.
    """
    parsed = [_parse(c) for c in codecs]
    out = np.zeros((len(codecs), len(codecs)), dtype=bool)
    for a, (sa, ra, ba) in enumerate(parsed):
        for b, (sb, rb, bb) in enumerate(parsed):
            drop_ok = sa is None or (sb == sa and rb >= ra)
            quant_ok = bb <= ba
            unknown = (sa or "").startswith("?") or (sb or "").startswith("?")
            out[a, b] = a == b or codecs[a] == "none" or (drop_ok and quant_ok and not unknown)
    return out


# --- option arrays shared with the exact solver --------------------------------------------

NOT_ALLOWED = np.float32(-1e30)  # added to a disallowed option's value; anything below -1e29 is one


@dataclass(frozen=True, eq=False)
class Options:
    """The problem's options as the greedy reads them.

    value[t, c, i] = alpha * quality - ttft_s: utility per unit freq, float32 (decisions need no
    more, and every pass over 100,000 x 48 options is then a few ms). A context's freq scales
    all its options alike, so comparisons within a context use value; across contexts, utility.
    allowed = value, or NOT_ALLOWED where profiles, floors, pins, reachability or the operator
    exclude the option: penalties are added rather than masked because masked numpy operations
    run several times slower than arithmetic on this machine.
    """

    value: np.ndarray  # [T, C, N] float32
    allowed: np.ndarray  # [T, C, N] float32
    drop_value: np.ndarray  # [N] float32, value of a miss
    drop_allowed: np.ndarray  # [N] float32
    codec_ok: np.ndarray  # [C, N] bool
    tier_ok: np.ndarray  # [T, N] bool
    current: np.ndarray  # [N] current flat option (c * T + t; C * T = dropped), -1 when new
    size_classes: tuple[np.ndarray, ...]  # codecs of equal size for every context, ascending size

    @property
    def drop_ok(self) -> np.ndarray:
        return self.drop_allowed > -1e29

    def flat_value(self) -> np.ndarray:
        """[N, O] float64 in the flat option order (o = c * T + t, last = dropped)."""
        n_tiers, n_codecs, n = self.value.shape
        stored = self.value.transpose(2, 1, 0).reshape(n, n_codecs * n_tiers)
        return np.concatenate([stored, self.drop_value[:, None]], axis=1).astype(np.float64)

    def feasible(self) -> np.ndarray:
        """[N, O] bool (materialised: the exact solver wants it, the greedy avoids it)."""
        n = self.value.shape[2]
        stored = (self.codec_ok.T[:, :, None] & self.tier_ok.T[:, None, :]).reshape(n, -1)
        return np.concatenate([stored, self.drop_ok[:, None]], axis=1)


def build_options(p: PlacementProblem) -> Options:
    n, n_codecs, n_tiers = p.n_contexts, len(p.codecs), len(p.tiers)
    value = np.empty((n_tiers, n_codecs, n), dtype=np.float32)
    quality_value = (p.alpha * p.quality).astype(np.float32)
    np.subtract(quality_value[None], p.ttft_s, out=value, casting="same_kind")
    drop_value = (p.alpha * MISS_QUALITY - p.miss_ttft_s).astype(np.float32)
    codec_ok, tier_ok, drop_ok = _allowed_masks(p)
    allowed = value  # the same array while nothing is excluded (a copy costs a pass)
    if not codec_ok.all():
        allowed = allowed + np.multiply(~codec_ok, NOT_ALLOWED, dtype=np.float32)[None]
    if not tier_ok.all():
        allowed = allowed + np.multiply(~tier_ok, NOT_ALLOWED, dtype=np.float32)[:, None, :]
    drop_allowed = drop_value + np.multiply(~drop_ok, NOT_ALLOWED, dtype=np.float32)
    stored_now = p.current_tier >= 0
    current = np.where(stored_now, p.current_codec * n_tiers + p.current_tier, -1)
    current = np.where(p.current_tier == DROPPED, n_codecs * n_tiers, current)
    classes = _size_classes(p.stored_bytes)
    return Options(value, allowed, drop_value, drop_allowed, codec_ok, tier_ok, current, classes)


def _allowed_masks(p: PlacementProblem) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """codec_ok [C, N], tier_ok [T, N], drop_ok [N]."""
    is_none = np.array([c == "none" for c in p.codecs])[:, None]
    codec_ok = p.profiled | is_none
    if (p.quality_floor > 0).any():  # quality estimates are >= 0, so a zero floor excludes nothing
        codec_ok &= (p.quality_lower >= p.quality_floor[None, :]) | is_none
    for constraint in (p.pin_codec, p.force_codec):  # an operator's codec overrides profiles and floors
        rows = np.flatnonzero(constraint >= 0)
        codec_ok[:, rows] = False
        codec_ok[constraint[rows], rows] = True
    stored_now = np.flatnonzero(p.current_tier >= 0)
    codec_ok[:, stored_now] &= p.derivable[p.current_codec[stored_now]].T
    codec_ok[:, p.current_tier == DROPPED] = False  # no copy left to recompress

    tiers = np.arange(len(p.tiers))[:, None]
    tier_ok = tiers >= p.min_tier[None, :]
    tier_ok &= (p.pin_tier[None, :] < 0) | (tiers == p.pin_tier[None, :])
    tier_ok &= (p.force_tier[None, :] == NO_PIN) | (tiers == p.force_tier[None, :])
    drop_ok = (p.pin_tier < 0) & (p.pin_codec < 0) & (p.force_codec < 0) & (p.force_tier < 0)
    drop_ok |= (p.force_tier == DROPPED) | (p.current_tier == DROPPED)
    return codec_ok, tier_ok, drop_ok


def _size_classes(stored_bytes: np.ndarray) -> tuple[np.ndarray, ...]:
    """Codecs whose stored size is equal for every context (knorm@0.5 and snapkv@0.5 are),
    ascending by size: compressing in place, only the best of a class is worth considering."""
    n_codecs = stored_bytes.shape[0]
    if stored_bytes.shape[1] == 0:
        return tuple(np.array([c]) for c in range(n_codecs))
    groups: dict[int, list[int]] = {}
    for c in np.argsort(stored_bytes.mean(axis=1), kind="stable"):
        groups.setdefault(int(stored_bytes[c, 0]), []).append(int(c))
    classes = []
    for members in groups.values():
        same = [m for m in members if np.array_equal(stored_bytes[m], stored_bytes[members[0]])]
        classes.append(np.array(same))
        classes.extend(np.array([m]) for m in members if m not in same)
    return tuple(classes)


def _cols(a: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """a[..., rows] for rows from flatnonzero; a itself (no copy) when rows is every column.

    np.take, not a[:, rows]: fancy indexing on the last axis returns a Fortran-ordered array,
    on which the reductions over axis 0 below run 15x slower.
    """
    return a if len(rows) == a.shape[-1] else np.take(a, rows, axis=-1)


_WEIGHTS: dict[int, np.ndarray] = {}


def _first_argmax(a: np.ndarray, amax: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(first index of the max along axis 0 of [K, n], the max). argmax(axis=0) runs ~6x
    slower here than a max reduction and a comparison."""
    k = a.shape[0]
    if amax is None:
        amax = a.max(axis=0)
    if k == 1:
        return np.zeros(a.shape[1], dtype=np.int64), amax
    dtype = np.int8 if k < 127 else np.int32
    weights = _WEIGHTS.get(k)
    if weights is None or weights.dtype != dtype:
        weights = _WEIGHTS[k] = np.arange(k, 0, -1, dtype=dtype)[:, None]
    hits = (a == amax).view(np.int8).astype(dtype, copy=False)
    hits = hits * weights if dtype != np.int8 else np.multiply(hits, weights, out=hits)
    return (k - hits.max(axis=0)).astype(np.int64), amax


# --- the greedy -----------------------------------------------------------------------------


def place(problem: PlacementProblem) -> Plan:
    """Plan every context's option (see the module docstring for the algorithm)."""
    opts = build_options(problem)
    opt, conflicts = _initial_options(problem, opts)
    for t in range(len(problem.tiers)):
        _relieve_tier(problem, opts, opt, t)
    _rehome_undroppable(problem, opts, opt)
    return _finish(problem, opts, opt, conflicts)


def _initial_options(p: PlacementProblem, opts: Options) -> tuple[np.ndarray, np.ndarray]:
    """Each context starts where it is if that is still allowed, else at its best allowed option."""
    n_tiers = len(p.tiers)
    opt = opts.current.copy()
    redo = (opt < 0) | ~_option_ok(p, opts, opt)
    if p.rebalance:
        redo |= p.current_tier >= 0
    rows = np.flatnonzero(redo)
    if len(rows) == 0:
        return opt, np.zeros(0, dtype=np.int64)
    # Best by value (utility per unit freq): the choice utility makes when freq > 0, and still
    # a sensible one for a context never looked up. Ties go to the faster tier, then to storing.
    best_codec = np.empty((n_tiers, len(rows)), dtype=np.int64)
    best_value = np.empty((n_tiers + 1, len(rows)), dtype=np.float32)
    for t in range(n_tiers):
        best_codec[t], best_value[t] = _first_argmax(_cols(opts.allowed[t], rows))
    best_value[n_tiers] = opts.drop_allowed[rows]
    tier, top = _first_argmax(best_value)
    found = top > -1e29
    chosen = np.where(
        tier == n_tiers,
        p.n_options - 1,
        best_codec[np.minimum(tier, n_tiers - 1), np.arange(len(rows))] * n_tiers + tier,
    )
    opt[rows[found]] = chosen[found]
    # No allowed option (e.g. a pinned codec the stored copy cannot reach): stay put, say so.
    return opt, rows[~found]


def _option_ok(p: PlacementProblem, opts: Options, opt: np.ndarray) -> np.ndarray:
    n_tiers, n_stored = len(p.tiers), p.n_options - 1
    c, t = np.divmod(np.clip(opt, 0, n_stored - 1), n_tiers)
    stored_ok = opts.allowed[t, c, np.arange(len(opt))] > -1e29
    return np.where(opt == n_stored, opts.drop_ok, (opt >= 0) & stored_ok)


def _relieve_tier(p: PlacementProblem, opts: Options, opt: np.ndarray, t: int) -> None:
    """Compress contexts on tier t or move them off it until it fits; updates `opt` in place."""
    n_tiers, n_stored = len(p.tiers), p.n_options - 1
    rows = np.flatnonzero((opt < n_stored) & (opt % n_tiers == t) & (opt >= 0))
    cur_codec = opt[rows] // n_tiers
    sizes = _cols(p.stored_bytes, rows)  # [C, n]
    cur_bytes = sizes[cur_codec, np.arange(len(rows))]
    excess = int(cur_bytes.sum()) - int(p.capacity_bytes[t])
    if excess <= 0:
        return
    freed, loss, target = _candidates(p, opts, rows, t, sizes, cur_codec, cur_bytes)
    steps, cutoff = _hull_steps(freed, loss, p.freq[rows], excess)
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
        opt[rows[row[block]]] = target[col[block], row[block]]


def _rehome_undroppable(p: PlacementProblem, opts: Options, opt: np.ndarray) -> None:
    """A context that may not be dropped (a pinned codec) can be pushed down onto a tier it
    overflows; move such contexts, largest first, to the fastest tier with room left."""
    n_tiers, n_stored = len(p.tiers), p.n_options - 1
    stored = (opt >= 0) & (opt < n_stored)
    tier = np.where(stored, opt % n_tiers, -1)
    sizes = p.stored_bytes[np.where(stored, opt // n_tiers, 0), np.arange(len(opt))]
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
            if dest != t and room and opts.allowed[dest, c, i] > -1e29:
                opt[i] = c * n_tiers + dest
                used[t] -= sizes[i]
                used[dest] += sizes[i]
                break


def _candidates(p, opts, rows, t, sizes, cur_codec, cur_bytes):
    """Each row's points (bytes freed on tier t, value lost, flat option), [K, n] each.

    Row 0 leaves the tier: the best option below no larger than now (a move never grows a
    context), or dropped. Then one row per size class, compressing in place, ascending size
    (so descending bytes freed). freed < 0 marks no candidate.
    """
    n, n_tiers = len(rows), len(p.tiers)
    ar = np.arange(n)
    cur_value = opts.value[t, cur_codec, rows]
    too_big = np.multiply(sizes > cur_bytes, NOT_ALLOWED, dtype=np.float32)
    lower = list(range(t + 1, n_tiers))
    exit_value = np.empty((len(lower) + 1, n), dtype=np.float32)
    exit_codec = np.empty((len(lower), n), dtype=np.int64)
    for k, low in enumerate(lower):
        exit_codec[k], exit_value[k] = _first_argmax(_cols(opts.allowed[low], rows) + too_big)
    exit_value[-1] = opts.drop_allowed[rows]
    which, best_exit = _first_argmax(exit_value)  # ties: faster tier, then storing over dropping
    chosen_tier = np.array(lower + [0])[which]
    exit_target = np.where(
        which == len(lower),
        p.n_options - 1,
        exit_codec[np.minimum(which, max(len(lower) - 1, 0)), ar] * n_tiers + chosen_tier
        if lower
        else 0,
    )
    classes = opts.size_classes
    freed = np.empty((1 + len(classes), n), dtype=np.int64)
    loss = np.empty((1 + len(classes), n), dtype=np.float32)
    target = np.empty((1 + len(classes), n), dtype=np.int64)
    ok = best_exit > -1e29
    freed[0], loss[0], target[0] = np.where(ok, cur_bytes, -1), cur_value - best_exit, exit_target
    here = _cols(opts.allowed[t], rows) + np.multiply(sizes >= cur_bytes, NOT_ALLOWED, dtype=np.float32)
    for k, members in enumerate(classes, start=1):
        if len(members) == 1:
            best = here[members[0]]  # a view: no reduction to do
            target[k] = members[0] * n_tiers + t
        else:
            pick, best = _first_argmax(here[members])
            target[k] = members[pick] * n_tiers + t
        np.subtract(cur_value, best, out=loss[k])
        freed[k] = np.where(best > -1e29, cur_bytes - sizes[members[0]], -1)
    return freed, loss, target


def _hull_steps(freed: np.ndarray, loss: np.ndarray, freq: np.ndarray, need: int) -> tuple[list[tuple], float]:
    """The first steps of each context's lower convex hull from (0, 0) over its (freed, loss)
    points ([K, n]; freed < 0 = no point), enough to free `need` bytes greedily.

    Vectorised gift wrapping: every pass takes, for all contexts still climbing, the next point
    with the lowest loss per byte; ties go to the lower row (more bytes freed). Hulls are per
    unit freq (a context's freq scales all its points alike); step slopes are returned in
    utility per byte (times freq) to rank steps across contexts. A context stops climbing once
    its last step costs more than the cutoff of the cheapest steps found so far that free
    `need`: its later steps cost more still, and the cutoff only falls as steps are found.
    Returns (one block per pass: (context, row of the point, bytes freed by the step, slope),
    the cutoff slope, inf if all the steps together free less than `need`).
    """
    n = freed.shape[1]
    idx = np.arange(n)
    fb, x, lo = freed, freed.astype(np.float32), loss
    cur_x = np.zeros(n, dtype=np.float32)
    cur_l = np.zeros(n, dtype=np.float32)
    cur_bytes = np.zeros(n, dtype=np.int64)
    steps: list[tuple] = []
    cutoff = _Cutoff(need)
    with np.errstate(divide="ignore", invalid="ignore"):
        while len(idx):
            dx = x - cur_x
            slope = (lo - cur_l) / dx
            # Points behind (dx < 0) get +inf, the current one (0/0) nan, which fmin skips.
            np.maximum(slope, dx * np.float32(-np.inf), out=slope)
            best = np.fmin.reduce(slope, axis=0)
            keep = np.flatnonzero(best < np.inf)
            if len(keep) == 0:
                break
            if len(keep) < len(idx):
                idx, fb, x, lo, slope = idx[keep], *(np.take(a, keep, axis=1) for a in (fb, x, lo, slope))
                best, cur_bytes = best[keep], cur_bytes[keep]
            col, _ = _first_argmax(np.negative(slope, out=slope), -best)
            ar = np.arange(len(idx))
            new_bytes = fb[col, ar]
            step_bytes = new_bytes - cur_bytes
            utility_slope = best.astype(np.float64) * freq[idx]
            steps.append((idx, col, step_bytes, utility_slope))
            cur_x, cur_l, cur_bytes = x[col, ar], lo[col, ar], new_bytes
            climbing = np.flatnonzero(utility_slope < cutoff.add(utility_slope, step_bytes))
            if len(climbing) < len(idx):
                idx, fb, x, lo = idx[climbing], *(np.take(a, climbing, axis=1) for a in (fb, x, lo))
                cur_x, cur_l, cur_bytes = cur_x[climbing], cur_l[climbing], cur_bytes[climbing]
    return steps, cutoff.value


class _Cutoff:
    """The slope of the last step the greedy would take among the steps added so far (inf
    until they free `need`). Steps costlier than the cutoff can never be taken, so only the
    cheaper ones are kept: each update works on a shrinking set.

    Between exact updates the value may be stale (too high): that only keeps a few more
    contexts climbing. It is refreshed when the cheaper steps added since amount to 1% of
    `need`, and `value` is exact whenever read.
    """

    def __init__(self, need: int) -> None:
        self.need, self.total, self._pending = need, 0, 0
        self._value = np.inf
        self.slopes: list[np.ndarray] = []
        self.sizes: list[np.ndarray] = []

    def add(self, slope: np.ndarray, step_bytes: np.ndarray) -> float:
        if np.isfinite(self._value):
            cheaper = slope < self._value
            if not cheaper.any():
                return self._value
            slope, step_bytes = slope[cheaper], step_bytes[cheaper]
        self.slopes.append(slope)
        self.sizes.append(step_bytes)
        added = int(step_bytes.sum())
        self.total += added
        self._pending += added
        if self.total >= self.need and (np.isinf(self._value) or self._pending > self.need // 100):
            self._refresh()
        return self._value

    @property
    def value(self) -> float:
        if self._pending and self.total >= self.need:
            self._refresh()
        return self._value

    def _refresh(self) -> None:
        slopes, sizes = np.concatenate(self.slopes), np.concatenate(self.sizes)
        self._value = _covering_slope(slopes, sizes, self.need)
        live = slopes <= self._value
        self.slopes, self.sizes = [slopes[live]], [sizes[live]]
        self.total, self._pending = int(self.sizes[0].sum()), 0


def _covering_slope(slope: np.ndarray, weight: np.ndarray, need: int) -> float:
    """The smallest v with sum(weight[slope <= v]) >= need: the slope of the last step a
    greedy taking steps cheapest first needs (inf if all of them are not enough).

    A full sort of a few 100,000 steps costs more than the rest of the tier, so a strided
    sample brackets v, two masked sums confirm the bracket, and only the steps inside it are
    sorted (the whole set if the bracket misses, which a skewed sample can make happen).
    """
    if int(weight.sum()) < need:
        return np.inf
    if len(slope) > 8192:
        stride = len(slope) // 2048
        sample_order = np.argsort(slope[::stride])
        sample_slope = slope[::stride][sample_order]
        cum = np.cumsum(weight[::stride][sample_order]) * stride  # each sample stands for `stride` steps
        at = int(np.searchsorted(cum, need))
        for margin in (64, 256):  # sample positions either side of the estimate
            lo = sample_slope[at - margin] if at - margin >= 0 else -np.inf
            hi = sample_slope[at + margin] if at + margin < len(sample_slope) else np.inf
            below = int(weight[slope < lo].sum())
            inside = (slope >= lo) & (slope <= hi)
            if below < need <= below + int(weight[inside].sum()):
                slope, weight, need = slope[inside], weight[inside], need - below
                break
    order = np.argsort(slope, kind="stable")
    cum = np.cumsum(weight[order])
    return float(slope[order[int(np.searchsorted(cum, need))]])


def _finish(p: PlacementProblem, opts: Options, opt: np.ndarray, conflicts: np.ndarray) -> Plan:
    n_tiers, n_stored = len(p.tiers), p.n_options - 1
    dropped = opt == n_stored
    codec_index = np.where(dropped, -1, opt // n_tiers)
    tier_index = np.where(dropped, DROPPED, opt % n_tiers)
    utility = p.freq * _value_at(opts, opt, n_tiers)
    stored_bytes = p.stored_bytes[np.maximum(codec_index, 0), np.arange(len(opt))]
    used = np.bincount(tier_index[~dropped], weights=stored_bytes[~dropped], minlength=n_tiers)
    changed = np.flatnonzero(opt != opts.current)
    current = opts.current[changed]
    before = np.where(current >= 0, p.freq[changed] * _value_at(opts, current, n_tiers, changed), np.nan)
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
    )


def _value_at(opts: Options, opt: np.ndarray, n_tiers: int, rows: np.ndarray | None = None) -> np.ndarray:
    """float64 value of flat option opt[k] for context rows[k] (every context when rows is None)."""
    rows = np.arange(len(opt)) if rows is None else rows
    n_stored = opts.value.shape[1] * n_tiers
    c, t = np.divmod(np.clip(opt, 0, n_stored - 1), n_tiers)
    stored = opts.value[t, c, rows].astype(np.float64)
    return np.where(opt == n_stored, opts.drop_value[rows].astype(np.float64), stored)


def _reasons(p, opts, changed, before, after) -> np.ndarray:
    """Why each changed context moves; later rules override earlier ones."""
    reason = np.where(after >= before, _UTILITY, _CAPACITY)
    cur_t, cur_c = p.current_tier[changed], p.current_codec[changed]
    below_floor = (cur_t >= 0) & (p.quality_lower[np.maximum(cur_c, 0), changed] < p.quality_floor[changed])
    reason = np.where(below_floor & (p.pin_codec[changed] < 0), _FLOOR, reason)
    pin_t, pin_c = p.pin_tier[changed], p.pin_codec[changed]
    breaks_pin = ((pin_t >= 0) & (cur_t != pin_t)) | ((pin_c >= 0) & (cur_c != pin_c))
    reason = np.where(breaks_pin, _PIN, reason)
    forced = (p.force_tier[changed] != NO_PIN) | (p.force_codec[changed] != NO_PIN)
    evicted = (cur_t >= 0) & (cur_t < p.min_tier[changed])  # an evict raised min_tier
    reason = np.where(forced | evicted, _OPERATOR, reason)
    reason = np.where(opts.current[changed] < 0, _ADMIT, reason)
    return reason.astype(np.int64)
