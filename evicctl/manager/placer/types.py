"""The placer's input and output: PlacementProblem (numpy arrays), Plan and its Moves.

Indices: contexts i in [0, N); codecs c in [0, C) (names in `codecs`); tiers t in [0, T),
fastest first. An option is o = c * T + t, and o = C * T is `dropped`.

A Plan keeps its moves as arrays; Move objects are built only when iterated (admitting 100,000
contexts would otherwise make 100,000 of them, which costs more than planning them).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields
from functools import cached_property
from typing import Any, NamedTuple

import numpy as np

from evicctl.errors import UnknownNameError
from evicctl.manager.codecs.names import CodecParts, derivable, parse_codec_name

NEW = -1  # current_tier of a context not yet placed (the manager holds its full KV)
DROPPED = -2  # current_tier / force_tier / final tier of a context with no stored copy
NO_PIN = -1
DROPPED_TIER = "dropped"  # tier name of the dropped option in plans and in the store

REASONS = ("admit", "capacity", "utility", "pin", "quality-floor", "operator")
REASON_ADMIT, REASON_CAPACITY, REASON_UTILITY, REASON_PIN, REASON_FLOOR, REASON_OPERATOR = range(len(REASONS))
KINDS = ("admit", "compress", "demote", "promote", "move", "drop")
_K_ADMIT, _K_COMPRESS, _K_DEMOTE, _K_PROMOTE, _K_MOVE, _K_DROP = range(len(KINDS))
_CHUNK = 4096  # moves built per batch when a plan is iterated


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
    # [N] bool: moved too recently for a rebalance to move it again (residence time, see
    # placer.REBALANCE_GAIN_REL); capacity, pins and the floor still move it.
    settled: np.ndarray | None = None
    # The figures the options were priced with (description.PricingInputs), when a manager priced
    # them: recorded with the plan it executes, so readers reprice exactly as the placer did.
    priced_with: Any = None

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
            "settled": lambda: np.zeros(n, dtype=bool),
        }
        for name, make in defaults.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, make())
        shapes = {
            "freq": (n,), "tokens": (n,), "capacity_bytes": (t,), "stored_bytes": (c, n),
            "quality": (c, n), "ttft_s": (t, c, n), "miss_ttft_s": (n,), "quality_lower": (c, n),
            "profiled": (c, n), "current_tier": (n,), "current_codec": (n,), "pin_tier": (n,),
            "pin_codec": (n,), "quality_floor": (n,), "force_tier": (n,), "force_codec": (n,),
            "min_tier": (n,), "derivable": (c, c), "settled": (n,),
        }  # fmt: skip
        for f in fields(self):
            if f.name in shapes:
                # C order: the placer reads per-option arrays through flat (raveled) indices
                arr = np.ascontiguousarray(getattr(self, f.name))
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


class Move(NamedTuple):
    """One change of one context's placement. from_tier is None for a new context.

    A NamedTuple, not a dataclass: a plan of 100,000 moves builds them ~5x faster.
    """

    context_id: str
    from_tier: str | None
    from_codec: str | None
    to_tier: str  # a tier name or "dropped"
    to_codec: str | None  # None when dropped
    reason: str  # one of REASONS
    utility_before: float | None
    utility_after: float
    kind: str  # one of KINDS: admit | compress | demote | promote | move | drop
    to_bytes: int  # stored bytes after the move (0 when dropped)

    def to_json(self) -> dict:
        return self._asdict()


@dataclass(frozen=True, eq=False)
class Plan:
    """The placer's answer: the final option of every context and the moves to get there.

    The moves are the `changed` contexts, in context order; iterating the plan builds them.
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
    options: Any = field(default=None, repr=False)  # the placer's Options (options.py), for room_prices

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
    def kind_code(self) -> np.ndarray:
        """[M] int8 index into KINDS of each move."""
        from_t = self.problem.current_tier[self.changed]
        to_t = self.tier_index[self.changed]
        kind = np.where(from_t > to_t, _K_PROMOTE, _K_MOVE)  # from DROPPED (-2) to a tier: a move
        kind = np.where((from_t >= 0) & (to_t > from_t), _K_DEMOTE, kind)
        kind = np.where(from_t == to_t, _K_COMPRESS, kind)
        kind = np.where(to_t == DROPPED, _K_DROP, kind)
        return np.where(from_t == NEW, _K_ADMIT, kind).astype(np.int8)

    @cached_property
    def moves(self) -> tuple[Move, ...]:
        return tuple(self.iter_moves())

    def iter_moves(self, kinds: Iterable[str] | None = None) -> Iterator[Move]:
        """The moves (optionally only those of some KINDS), built a chunk at a time."""
        positions = None
        if kinds is not None:
            wanted = [KINDS.index(k) for k in kinds]
            positions = np.flatnonzero(np.isin(self.kind_code, wanted))
        total = len(self.changed) if positions is None else len(positions)
        for start in range(0, total, _CHUNK):
            if positions is None:
                yield from self._build(slice(start, start + _CHUNK))
            else:
                yield from self._build(positions[start : start + _CHUNK])

    def move_of(self, context_id: str) -> Move | None:
        """The move of one context, or None if it stays where it is."""
        at = np.flatnonzero(self.problem.context_ids[self.changed] == context_id)
        return self._build(at[:1])[0] if len(at) else None

    def __iter__(self) -> Iterator[Move]:
        return self.iter_moves()

    def __len__(self) -> int:
        return len(self.changed)

    def __getitem__(self, k):
        positions = range(len(self.changed))[k]  # IndexError and negative indices as for a tuple
        if isinstance(positions, range):
            return tuple(self._build(np.array(positions, dtype=np.int64)))
        return self._build(np.array([positions]))[0]

    def option_of(self, i: int) -> tuple[str, str | None]:
        """(tier name, codec name) of context index i after the plan; ("dropped", None) if dropped."""
        t, c = int(self.tier_index[i]), int(self.codec_index[i])
        if t == DROPPED:
            return DROPPED_TIER, None
        return self.problem.tiers[t], self.problem.codecs[c]

    def _build(self, at) -> list[Move]:
        """Moves at positions `at` (a slice or index array into `changed`), column by column:
        names are looked up with numpy, so the per-move Python work is one tuple."""
        p = self.problem
        rows = self.changed[at]
        n_tiers, n_codecs = len(p.tiers), len(p.codecs)
        tier_names = np.array([*p.tiers, DROPPED_TIER, None], dtype=object)  # NEW (-1) -> None
        codec_names = np.array([*p.codecs, None], dtype=object)
        from_t, to_t = p.current_tier[rows], self.tier_index[rows]
        to_c = self.codec_index[rows]
        from_c = np.where(from_t >= 0, p.current_codec[rows], n_codecs)
        to_bytes = np.where(to_c >= 0, p.stored_bytes[np.maximum(to_c, 0), rows], 0)
        before = self.utility_before[at].astype(object)
        before[np.isnan(self.utility_before[at])] = None  # a new context had no utility
        columns = (
            p.context_ids[rows].tolist(),
            tier_names[np.where(from_t >= 0, from_t, np.where(from_t == DROPPED, n_tiers, n_tiers + 1))].tolist(),
            codec_names[from_c].tolist(),
            tier_names[np.where(to_t >= 0, to_t, n_tiers)].tolist(),
            codec_names[np.where(to_c >= 0, to_c, n_codecs)].tolist(),
            np.array(REASONS, dtype=object)[self.reason_code[at]].tolist(),
            before.tolist(),
            self.utility[rows].tolist(),
            np.array(KINDS, dtype=object)[self.kind_code[at]].tolist(),
            to_bytes.tolist(),
        )
        new = tuple.__new__
        return [new(Move, row) for row in zip(*columns, strict=True)]


# --- codec names -> which codecs a stored copy can still reach -----------------------------

def _parts(name: str) -> CodecParts | None:
    """The codec's parts, or None for a name outside the registry's forms."""
    try:
        return parse_codec_name(name)
    except UnknownNameError:
        return None


def derivable_matrix(codecs) -> np.ndarray:
    """[C, C] bool: derivable[a, b] iff a copy stored at codec a can be recompressed to b.

    Dropped tokens and lost precision cannot come back, so from a stored copy only codecs at
    least as hard in the menu's partial order are reachable (names.derivable: removing at least
    as many tokens with the same scorer, and no more bits). From `none` every codec is.
    """
    parsed = [_parts(c) for c in codecs]
    out = np.zeros((len(codecs), len(codecs)), dtype=bool)
    for a, pa in enumerate(parsed):
        for b, pb in enumerate(parsed):
            if a == b or codecs[a] == "none":
                out[a, b] = True
            elif pa is not None and pb is not None:  # unknown names: reachable only from none
                out[a, b] = derivable(pa.name, pb.name)
    return out
