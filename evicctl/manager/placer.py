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

    Shapes: N contexts, C codecs, T tiers. Bytes are int64, times seconds, freq accesses/s.
    """

    context_ids: np.ndarray  # [N] str
    freq: np.ndarray  # [N] decayed access rate
    tokens: np.ndarray  # [N] tokens of the full context
    codecs: tuple[str, ...]  # [C]
    tiers: tuple[str, ...]  # [T], fastest first
    capacity_bytes: np.ndarray  # [T]
    stored_bytes: np.ndarray  # [N, C] bytes of each context under each codec (same on every tier)
    quality: np.ndarray  # [N, C] estimate in [0, 1]
    ttft_s: np.ndarray  # [N, C, T] predicted TTFT of a query served from that option
    miss_ttft_s: np.ndarray  # [N] TTFT of a miss (full prefill)
    alpha: float  # seconds of TTFT one unit of quality is worth
    quality_lower: np.ndarray | None = None  # [N, C] lower bound the floor is checked against
    profiled: np.ndarray | None = None  # [N, C] bool; an unprofiled codec is never chosen (except none)
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
            "profiled": lambda: np.ones((n, c), dtype=bool),
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
            "freq": (n,), "tokens": (n,), "capacity_bytes": (t,), "stored_bytes": (n, c),
            "quality": (n, c), "ttft_s": (n, c, t), "miss_ttft_s": (n,), "quality_lower": (n, c),
            "profiled": (n, c), "current_tier": (n,), "current_codec": (n,), "pin_tier": (n,),
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
        return tuple(self._move(k) for k in range(len(self.changed)))

    def __iter__(self):
        return iter(self.moves)

    def __len__(self) -> int:
        return len(self.changed)

    def __getitem__(self, k: int) -> Move:
        return self.moves[k]

    def option_of(self, i: int) -> tuple[str, str | None]:
        """(tier name, codec name) of context index i after the plan; ("dropped", None) if dropped."""
        t, c = int(self.tier_index[i]), int(self.codec_index[i])
        if t == DROPPED:
            return DROPPED_TIER, None
        return self.problem.tiers[t], self.problem.codecs[c]

    def _move(self, k: int) -> Move:
        p, i = self.problem, int(self.changed[k])
        ct, cc = int(p.current_tier[i]), int(p.current_codec[i])
        to_tier, to_codec = self.option_of(i)
        from_tier = None if ct == NEW else DROPPED_TIER if ct == DROPPED else p.tiers[ct]
        from_codec = p.codecs[cc] if ct >= 0 else None
        before = float(self.utility_before[k])
        to_bytes = 0 if to_codec is None else int(p.stored_bytes[i, self.codec_index[i]])
        return Move(
            context_id=str(p.context_ids[i]),
            from_tier=from_tier,
            from_codec=from_codec,
            to_tier=to_tier,
            to_codec=to_codec,
            reason=REASONS[int(self.reason_code[k])],
            utility_before=None if np.isnan(before) else before,
            utility_after=float(self.utility[i]),
            kind=_kind(ct, int(self.tier_index[i]), from_codec, to_codec),
            to_bytes=to_bytes,
        )


def _kind(from_t: int, to_t: int, from_codec: str | None, to_codec: str | None) -> str:
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


@dataclass(frozen=True, eq=False)
class Options:
    """The problem's options in the layout the greedy reads fastest.

    value[t] is [N, C]: alpha * quality - ttft_s (utility per unit freq) of each codec on tier t.
    float32: one pass over 100,000 x 48 options is then a few ms, and the decisions need no more.
    Utility is freq * value; a context's freq scales all its options alike, so comparisons
    within a context use value and only comparisons across contexts need freq.
    """

    value: np.ndarray  # [T, N, C] float32
    drop_value: np.ndarray  # [N] float32, value of a miss
    codec_ok: np.ndarray  # [N, C] bool: allowed codecs (profiles, floors, pins, reachability)
    tier_ok: np.ndarray  # [N, T] bool: allowed tiers (pins, operator, min_tier)
    drop_ok: np.ndarray  # [N] bool
    current: np.ndarray  # [N] current flat option, -1 when new
    size_classes: tuple[np.ndarray, ...]  # codecs of equal size for every context, ascending size

    def flat_value(self) -> np.ndarray:
        """[N, O] float64 in the flat option order (o = c * T + t, last = dropped)."""
        n_tiers, n, n_codecs = self.value.shape
        stored = self.value.transpose(1, 2, 0).reshape(n, n_codecs * n_tiers)
        return np.concatenate([stored, self.drop_value[:, None]], axis=1).astype(np.float64)

    def feasible(self) -> np.ndarray:
        """[N, O] bool (materialised; the exact solver wants it, the greedy avoids it)."""
        n = len(self.drop_ok)
        stored = (self.codec_ok[:, :, None] & self.tier_ok[:, None, :]).reshape(n, -1)
        return np.concatenate([stored, self.drop_ok[:, None]], axis=1)


def build_options(p: PlacementProblem) -> Options:
    n, n_codecs, n_tiers = p.n_contexts, len(p.codecs), len(p.tiers)
    value = np.empty((n_tiers, n, n_codecs), dtype=np.float32)
    quality_value = p.alpha * p.quality
    for t in range(n_tiers):
        np.subtract(quality_value, p.ttft_s[:, :, t], out=value[t], casting="same_kind")
    drop_value = (p.alpha * MISS_QUALITY - p.miss_ttft_s).astype(np.float32)

    is_none = np.array([c == "none" for c in p.codecs])
    codec_ok = (p.profiled | is_none) & ((p.quality_lower >= p.quality_floor[:, None]) | is_none)
    for constraint in (p.pin_codec, p.force_codec):  # an operator's codec overrides profiles and floors
        rows = np.flatnonzero(constraint >= 0)
        codec_ok[rows] = False
        codec_ok[rows, constraint[rows]] = True
    stored_now = p.current_tier >= 0
    codec_ok[stored_now] &= p.derivable[p.current_codec[stored_now]]
    codec_ok[p.current_tier == DROPPED] = False  # no copy left to recompress

    tiers = np.arange(n_tiers)
    tier_ok = tiers[None, :] >= p.min_tier[:, None]
    tier_ok &= (p.pin_tier[:, None] < 0) | (tiers[None, :] == p.pin_tier[:, None])
    tier_ok &= (p.force_tier[:, None] == NO_PIN) | (tiers[None, :] == p.force_tier[:, None])
    drop_ok = (p.pin_tier < 0) & (p.pin_codec < 0) & (p.force_codec < 0) & (p.force_tier < 0)
    drop_ok |= (p.force_tier == DROPPED) | (p.current_tier == DROPPED)

    current = np.where(stored_now, p.current_codec * n_tiers + p.current_tier, -1)
    current = np.where(p.current_tier == DROPPED, n_codecs * n_tiers, current)
    return Options(value, drop_value, codec_ok, tier_ok, drop_ok, current, _size_classes(p.stored_bytes))


def _size_classes(stored_bytes: np.ndarray) -> tuple[np.ndarray, ...]:
    """Group codecs whose stored size is equal for every context (knorm@0.5 and snapkv@0.5
    are), ascending by size: on a tier only the best of a group is worth compressing to."""
    if len(stored_bytes) == 0:
        return tuple(np.array([c]) for c in range(stored_bytes.shape[1]))
    first = stored_bytes[0]
    groups: dict[int, list[int]] = {}
    for c in np.argsort(stored_bytes.mean(axis=0), kind="stable"):
        groups.setdefault(int(first[c]), []).append(int(c))
    classes = []
    for members in groups.values():
        same = (stored_bytes[:, members] == stored_bytes[:, members[:1]]).all(axis=0)
        classes.append(np.array([m for m, s in zip(members, same, strict=True) if s]))
        classes.extend(np.array([m]) for m, s in zip(members, same, strict=True) if not s)
    return tuple(classes)


def _subset(a: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """a[rows] for rows from flatnonzero; a itself (no copy) when rows is every row."""
    return a if len(rows) == len(a) else a[rows]


# --- the greedy -----------------------------------------------------------------------------


def place(problem: PlacementProblem) -> Plan:
    """Plan every context's option (see the module docstring for the algorithm)."""
    opts = build_options(problem)
    opt, conflicts = _initial_options(problem, opts)
    for t in range(len(problem.tiers)):
        _relieve_tier(problem, opts, opt, t)
    return _finish(problem, opts, opt, conflicts)


def _initial_options(p: PlacementProblem, opts: Options) -> tuple[np.ndarray, np.ndarray]:
    """Each context starts where it is if that is still allowed, else at its best allowed option."""
    opt = opts.current.copy()
    redo = ~_option_ok(p, opts, opt) | (opt < 0)
    if p.rebalance:
        redo |= p.current_tier >= 0
    rows = np.flatnonzero(redo)
    if len(rows) == 0:
        return opt, np.zeros(0, dtype=np.int64)
    # Best by value (utility per unit freq): the choice utility makes when freq > 0, and still
    # a sensible one for a context never looked up. Ties go to the faster tier, then to storing.
    codec_ok = _subset(opts.codec_ok, rows)
    best_value = np.where(opts.drop_ok[rows], opts.drop_value[rows], -np.inf)
    best_option = np.full(len(rows), p.n_options - 1)
    for t in reversed(range(len(p.tiers))):
        masked = np.where(codec_ok & opts.tier_ok[rows, t, None], _subset(opts.value[t], rows), -np.inf)
        c = masked.argmax(axis=1)
        v = masked[np.arange(len(rows)), c]
        better = v >= best_value
        best_value = np.where(better, v, best_value)
        best_option = np.where(better, c * len(p.tiers) + t, best_option)
    found = np.isfinite(best_value)
    opt[rows[found]] = best_option[found]
    # No allowed option (e.g. a pinned codec the stored copy cannot reach): stay put, say so.
    return opt, rows[~found]


def _option_ok(p: PlacementProblem, opts: Options, opt: np.ndarray) -> np.ndarray:
    n_tiers, n_stored = len(p.tiers), p.n_options - 1
    c, t = np.divmod(np.clip(opt, 0, n_stored - 1), n_tiers)
    rows = np.arange(len(opt))
    stored_ok = opts.codec_ok[rows, c] & opts.tier_ok[rows, t]
    return np.where(opt == n_stored, opts.drop_ok, (opt >= 0) & stored_ok)


def _relieve_tier(p: PlacementProblem, opts: Options, opt: np.ndarray, t: int) -> None:
    """Compress contexts on tier t or move them off it until it fits; updates `opt` in place."""
    n_tiers, n_stored = len(p.tiers), p.n_options - 1
    rows = np.flatnonzero((opt >= 0) & (opt < n_stored) & (opt % n_tiers == t))
    ar = np.arange(len(rows))
    cur_codec = opt[rows] // n_tiers
    sizes = _subset(p.stored_bytes, rows)  # [n, C]
    cur_bytes = sizes[ar, cur_codec]
    excess = int(cur_bytes.sum()) - int(p.capacity_bytes[t])
    if excess <= 0:
        return
    value_here = _subset(opts.value[t], rows)  # [n, C]
    cur_value = value_here[ar, cur_codec]
    freed, loss, target = _candidates(p, opts, rows, t, sizes, cur_bytes, cur_value, value_here)
    seg_row, seg_col, seg_freed, seg_slope = _hull_steps(freed, loss)
    if len(seg_row) == 0:
        return
    # Loss per byte in utility units: the hull is computed per unit freq (a context's freq
    # scales all its points alike), the ranking across contexts needs freq.
    order = np.argsort(seg_slope * p.freq[rows[seg_row]])
    cum = np.cumsum(seg_freed[order])
    taken = order[: min(int(np.searchsorted(cum, excess)) + 1, len(order))]
    # A context's steps are taken in hull order and emitted step by step, so its last taken
    # step (the largest index) is where it ends.
    taken = np.sort(taken)[::-1]
    last_rows, first = np.unique(seg_row[taken], return_index=True)
    opt[rows[last_rows]] = target[last_rows, seg_col[taken[first]]]


def _candidates(p, opts, rows, t, sizes, cur_bytes, cur_value, value_here):
    """Each row's points (bytes freed on tier t, value lost, flat option): column 0 leaves the
    tier (the best option below no larger than now, or dropped), then one column per size
    class compressing in place, by decreasing bytes freed. freed <= 0 marks no candidate."""
    n, n_tiers = len(rows), len(p.tiers)
    ar = np.arange(n)
    codec_ok = _subset(opts.codec_ok, rows)
    exit_value = np.where(opts.drop_ok[rows], opts.drop_value[rows], -np.inf)
    exit_target = np.full(n, p.n_options - 1)
    fits = codec_ok & (sizes <= cur_bytes[:, None])  # a move never grows a context
    for lower in reversed(range(t + 1, n_tiers)):  # ties go to the faster tier
        masked = np.where(fits & opts.tier_ok[rows, lower, None], _subset(opts.value[lower], rows), -np.inf)
        c = masked.argmax(axis=1)
        v = masked[ar, c]
        better = v >= exit_value
        exit_value = np.where(better, v, exit_value)
        exit_target = np.where(better, c * n_tiers + lower, exit_target)
    k = 1 + len(opts.size_classes)
    freed = np.zeros((n, k), dtype=np.int64)
    loss = np.zeros((n, k), dtype=np.float32)
    target = np.zeros((n, k), dtype=np.int64)
    freed[:, 0] = np.where(np.isfinite(exit_value), cur_bytes, 0)
    loss[:, 0] = np.where(np.isfinite(exit_value), cur_value - exit_value, 0)
    target[:, 0] = exit_target
    here_ok = codec_ok & opts.tier_ok[rows, t, None] & (sizes < cur_bytes[:, None])
    for col, members in enumerate(opts.size_classes, start=1):
        masked = np.where(here_ok[:, members], value_here[:, members], -np.inf)
        pick = masked.argmax(axis=1) if len(members) > 1 else np.zeros(n, dtype=np.int64)
        v = masked[ar, pick]
        ok = np.isfinite(v)
        freed[:, col] = np.where(ok, cur_bytes - sizes[:, members[0]], 0)
        loss[:, col] = np.where(ok, cur_value - v, 0)
        target[:, col] = members[pick] * n_tiers + t
    return freed, loss, target


def _hull_steps(freed: np.ndarray, loss: np.ndarray):
    """Each row's lower convex hull from (0, 0) over its (freed, loss) points, freed > 0 only.

    Vectorised gift wrapping: every pass takes, for all rows at once, the next point with the
    lowest loss per byte; ties go to the lower column (more bytes freed). Returns flat arrays
    (row, column, bytes freed by the step, loss per byte), emitted step by step, so a row's
    later steps come later.
    """
    n = freed.shape[0]
    idx = np.arange(n)
    fb, x, lo = freed, freed.astype(np.float32), loss
    cur_x = np.zeros(n, dtype=np.float32)
    cur_l = np.zeros(n, dtype=np.float32)
    cur_bytes = np.zeros(n, dtype=np.int64)
    out = []
    while len(idx):
        dx = x - cur_x[:, None]
        slope = np.full(dx.shape, np.inf, dtype=np.float32)
        np.divide(lo - cur_l[:, None], dx, out=slope, where=dx > 0)
        col = slope.argmin(axis=1)
        best = slope[np.arange(len(idx)), col]
        keep = np.flatnonzero(best < np.inf)
        if len(keep) == 0:
            break
        if len(keep) < len(idx):  # compact to the rows still climbing their hull
            idx, fb, x, lo = idx[keep], fb[keep], x[keep], lo[keep]
            col, best, cur_bytes = col[keep], best[keep], cur_bytes[keep]
        ar = np.arange(len(idx))
        new_bytes = fb[ar, col]
        out.append((idx, col, new_bytes - cur_bytes, best))
        cur_x, cur_l, cur_bytes = x[ar, col], lo[ar, col], new_bytes
    if not out:
        return (np.zeros(0, dtype=np.int64),) * 3 + (np.zeros(0),)
    row, col, step_bytes, slope = (np.concatenate(parts) for parts in zip(*out, strict=True))
    return row, col, step_bytes, slope.astype(np.float64)


def _finish(p: PlacementProblem, opts: Options, opt: np.ndarray, conflicts: np.ndarray) -> Plan:
    n_tiers, n_stored = len(p.tiers), p.n_options - 1
    dropped = opt == n_stored
    codec_index = np.where(dropped, -1, opt // n_tiers)
    tier_index = np.where(dropped, DROPPED, opt % n_tiers)
    utility = p.freq * _value_at(opts, opt, n_tiers)
    stored_bytes = p.stored_bytes[np.arange(len(opt)), np.maximum(codec_index, 0)]
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
    """float64 value of flat option opt[k] of context rows[k] (all contexts when rows is None)."""
    rows = np.arange(len(opt)) if rows is None else rows
    n_stored = opts.value.shape[2] * n_tiers
    c, t = np.divmod(np.clip(opt, 0, n_stored - 1), n_tiers)
    stored = opts.value[t, rows, c].astype(np.float64)
    return np.where(opt == n_stored, opts.drop_value[rows].astype(np.float64), stored)


def _reasons(p, opts, changed, before, after) -> np.ndarray:
    """Why each changed context moves; later rules override earlier ones."""
    reason = np.where(after >= before, _UTILITY, _CAPACITY)
    cur_t, cur_c = p.current_tier[changed], p.current_codec[changed]
    below_floor = (cur_t >= 0) & (
        p.quality_lower[changed, np.maximum(cur_c, 0)] < p.quality_floor[changed]
    )
    reason = np.where(below_floor & (p.pin_codec[changed] < 0), _FLOOR, reason)
    pin_t, pin_c = p.pin_tier[changed], p.pin_codec[changed]
    breaks_pin = ((pin_t >= 0) & (cur_t != pin_t)) | ((pin_c >= 0) & (cur_c != pin_c))
    reason = np.where(breaks_pin, _PIN, reason)
    forced = (p.force_tier[changed] != NO_PIN) | (p.force_codec[changed] != NO_PIN)
    evicted = (cur_t >= 0) & (cur_t < p.min_tier[changed])  # an evict raised min_tier
    reason = np.where(forced | evicted, _OPERATOR, reason)
    reason = np.where(opts.current[changed] < 0, _ADMIT, reason)
    return reason.astype(np.int64)
