"""The options of a placement problem as the greedy reads them (value per unit freq, which
options each context may take) and the numpy helpers its passes share.

Every pass here is over [C, N] or [T, C, N] arrays (N = 100,000 in the benchmark), so the
helpers avoid what numpy does slowly on this machine: masked operations, argmax along axis 0,
fancy indexing on the last axis.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from evicctl.manager.placer.pricing import MISS_QUALITY, option_value
from evicctl.manager.placer.types import DROPPED, NO_PIN, PlacementProblem

NOT_ALLOWED = np.float32(-1e30)  # added to a disallowed option's value; anything below -1e29 is one


@dataclass(frozen=True, eq=False)
class Options:
    """The problem's options as the greedy reads them.

    value[t, c, i] = alpha * quality - ttft_s: utility per unit freq, float32 (decisions need no
    more, and every pass over 100,000 x 48 options is then a few ms). A context's freq scales
    all its options alike, so comparisons within a context use value; across contexts, utility.
    The allowed value of an option is its value, or NOT_ALLOWED where profiles, floors, pins,
    reachability or the operator exclude it: penalties are added rather than masked because
    masked numpy operations run several times slower than arithmetic on this machine. They are
    added per tier and only for the contexts a pass looks at (`allowed_at`).
    """

    value: np.ndarray  # [T, C, N] float32
    drop_value: np.ndarray  # [N] float32, value of a miss
    drop_allowed: np.ndarray  # [N] float32
    codec_ok: np.ndarray  # [C, N] bool
    tier_ok: np.ndarray  # [T, N] bool
    current: np.ndarray  # [N] current flat option (c * T + t; C * T = dropped), -1 when new
    size_classes: tuple[np.ndarray, ...]  # codecs of equal size for every context, ascending size
    # tier -> (codec [N], allowed value [N]) of every context's best codec on that tier, kept
    # when a pass computed it for all contexts (a cold start does) so later passes reuse it.
    tier_best: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    @property
    def drop_ok(self) -> np.ndarray:
        return self.drop_allowed > -1e29

    @cached_property
    def _codec_penalty(self) -> np.ndarray | None:
        """[C, N] float32, or None when no codec is excluded for anyone."""
        return None if self.codec_ok.all() else np.multiply(~self.codec_ok, NOT_ALLOWED, dtype=np.float32)

    @cached_property
    def _tier_penalty(self) -> np.ndarray | None:
        """[T, N] float32, or None when no tier is excluded for anyone."""
        return None if self.tier_ok.all() else np.multiply(~self.tier_ok, NOT_ALLOWED, dtype=np.float32)

    def allowed_at(self, t: int, rows: np.ndarray) -> np.ndarray:
        """[C, len(rows)] float32 allowed values on tier t. Read only: it may be a view of value."""
        out = row_columns(self.value[t], rows)
        fresh = len(rows) != self.value.shape[2]  # np.take made a copy we may add into
        if self._codec_penalty is not None:
            out, fresh = out + row_columns(self._codec_penalty, rows), True
        if self._tier_penalty is not None:
            penalty = row_columns(self._tier_penalty[t], rows)[None]
            out = np.add(out, penalty, out=out) if fresh else out + penalty
        return out

    def option_ok(self, c: np.ndarray, t: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Whether stored option (codec c[k], tier t[k]) is allowed for context rows[k]."""
        n = self.codec_ok.shape[1]
        return self.codec_ok.reshape(-1).take(c * n + rows) & self.tier_ok.reshape(-1).take(t * n + rows)

    @cached_property
    def allowed(self) -> np.ndarray:
        """[T, C, N] float32 allowed values of every option (materialised: for inspection)."""
        everyone = np.arange(self.value.shape[2])
        return np.stack([self.allowed_at(t, everyone) for t in range(self.value.shape[0])])

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


def build_options(p: PlacementProblem, *, size_classes: bool = True) -> Options:
    """size_classes False: leave them out (a one-context admission never compresses in place)."""
    n_codecs, n_tiers = len(p.codecs), len(p.tiers)
    value = option_value(p.alpha, p.quality, p.ttft_s, out=np.empty((n_tiers, n_codecs, p.n_contexts), dtype=np.float32))
    drop_value = option_value(p.alpha, MISS_QUALITY, p.miss_ttft_s)
    codec_ok, tier_ok, drop_ok = _allowed_masks(p)
    drop_allowed = drop_value + np.multiply(~drop_ok, NOT_ALLOWED, dtype=np.float32)
    stored_now = p.current_tier >= 0
    current = np.where(stored_now, p.current_codec * n_tiers + p.current_tier, -1)
    current = np.where(p.current_tier == DROPPED, n_codecs * n_tiers, current)
    classes = _size_classes(p.stored_bytes) if size_classes else ()
    return Options(value, drop_value, drop_allowed, codec_ok, tier_ok, current, classes)


def _allowed_masks(p: PlacementProblem) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """codec_ok [C, N], tier_ok [T, N], drop_ok [N]."""
    n_codecs = len(p.codecs)
    is_none = np.array([c == "none" for c in p.codecs])[:, None]
    codec_ok = p.profiled | is_none
    if (p.quality_floor > 0).any():  # quality estimates are >= 0, so a zero floor excludes nothing
        codec_ok &= (p.quality_lower >= p.quality_floor[None, :]) | is_none
    for constraint in (p.pin_codec, p.force_codec):  # an operator's codec overrides profiles and floors
        rows = np.flatnonzero(constraint >= 0)
        codec_ok[:, rows] = False
        codec_ok[constraint[rows], rows] = True
    stored_now = p.current_tier >= 0
    if stored_now.any():
        # reach[b, a]: codec b can be made from a copy at codec a; column C (no copy yet) reaches all
        reach = np.ones((n_codecs, n_codecs + 1), dtype=bool)
        reach[:, :n_codecs] = p.derivable.T
        codec_ok &= np.take(reach, np.where(stored_now, p.current_codec, n_codecs), axis=1)
    dropped_now = p.current_tier == DROPPED
    if dropped_now.any():
        codec_ok &= ~dropped_now  # no copy left to recompress

    tiers = np.arange(len(p.tiers))[:, None]
    tier_ok = tiers >= p.min_tier[None, :]
    tier_ok &= (p.pin_tier[None, :] < 0) | (tiers == p.pin_tier[None, :])
    tier_ok &= (p.force_tier[None, :] == NO_PIN) | (tiers == p.force_tier[None, :])
    drop_ok = (p.pin_tier < 0) & (p.pin_codec < 0) & (p.force_codec < 0) & (p.force_tier < 0)
    drop_ok |= (p.force_tier == DROPPED) | dropped_now
    return codec_ok, tier_ok, drop_ok


def _size_classes(stored_bytes: np.ndarray) -> tuple[np.ndarray, ...]:
    """Codecs whose stored size is equal for every context (knorm@0.5 and snapkv@0.5 are),
    ascending by size: compressing in place, only the best of a class is worth considering.
    (The order only breaks ties; a strided sample of the contexts sets it.)"""
    n_codecs, n = stored_bytes.shape
    if n == 0:
        return tuple(np.array([c]) for c in range(n_codecs))
    sample = stored_bytes[:, :: max(1, n // 1024)]
    groups: dict[int, list[int]] = {}
    for c in np.argsort(sample.mean(axis=1), kind="stable"):
        groups.setdefault(int(stored_bytes[c, 0]), []).append(int(c))
    classes = []
    for members in groups.values():
        first = stored_bytes[members[0]]
        same = [m for m in members if m == members[0] or np.array_equal(stored_bytes[m], first)]
        classes.append(np.array(same))
        classes.extend(np.array([m]) for m in members if m not in same)
    return tuple(classes)


def row_columns(a: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """a[..., rows] for rows from flatnonzero; a itself (no copy) when rows is every column.

    np.take, not a[:, rows]: fancy indexing on the last axis returns a Fortran-ordered array,
    on which the reductions over axis 0 below run 15x slower.
    """
    return a if len(rows) == a.shape[-1] else np.take(a, rows, axis=-1)


_WEIGHTS: dict[int, np.ndarray] = {}


def first_argmax(a: np.ndarray, amax: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(first index of the max along axis 0 of [K, n], the max). argmax(axis=0) runs ~6x
    slower here than a max reduction and a comparison."""
    k = a.shape[0]
    if amax is None:
        amax = a.max(axis=0)
    if k == 1:
        return np.zeros(a.shape[1], dtype=np.int64), amax
    return first_equal(a, amax), amax


def first_equal(a: np.ndarray, target: np.ndarray) -> np.ndarray:
    """[n] int64: the first k with a[k, i] == target[i] (k = K, never returned, if none)."""
    k = a.shape[0]
    dtype = np.int8 if k < 127 else np.int32
    weights = _WEIGHTS.get(k)
    if weights is None or weights.dtype != dtype:
        weights = _WEIGHTS[k] = np.arange(k, 0, -1, dtype=dtype)[:, None]
    hits = (a == target).view(np.int8).astype(dtype, copy=False)
    hits = hits * weights if dtype != np.int8 else np.multiply(hits, weights, out=hits)
    return (k - hits.max(axis=0)).astype(np.int64)
