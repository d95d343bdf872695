"""Trace-driven replay: one policy serves a trace over a catalog, with tier accounting in bytes.

The simulator owns the state every policy shares (where each context is, at which codec,
bytes used per tier) and the only way to change it (`Simulator.place`), which keeps the
books: bytes admitted, moved and loaded, and that no tier ever goes over capacity and no
stored copy is "decompressed" (a codec is reachable from a stored copy only if the placer's
`derivable_matrix` says so). Policies only decide.

Per request the loop records which (tier, codec) served it, or a miss, and where a miss's
new KV was admitted (the queueing model charges the store); delays and
qualities are computed afterwards for all requests at once from the catalog's cost model,
with each request's own query length. A sane policy never loads a KV more slowly than it
could recompute it: such a hit is served as a recompute (full quality, miss delay).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from evicctl.manager.placer.place import DROPPED, derivable_matrix
from evicctl.replay.catalog import Catalog
from evicctl.replay.trace import Trace

MISS = -1  # served_tier of a miss (full prefill)
RECOMPUTE = -2  # served_tier of a hit served as a recompute because loading was slower


class CapacityError(RuntimeError):
    """A policy left a tier over capacity or decompressed a stored copy (a bug, never data)."""


class Simulator:
    """Placement state: where each context is (numpy, so a re-plan selects rows without a
    Python pass) and bytes per tier (Python ints, exact)."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        n, t = catalog.n_contexts, len(catalog.tiers)
        self.tier = np.full(n, DROPPED, dtype=np.int64)  # [N] tier index or DROPPED
        self.codec = np.full(n, -1, dtype=np.int64)  # [N] catalog codec index, -1 when not stored
        self.used: list[int] = [0] * t
        self.capacity: list[int] = [int(c) for c in catalog.capacity_bytes]
        self.sizes: list[list[int]] = catalog.stored_bytes.T.tolist()  # [N][C]
        self._derivable = derivable_matrix(catalog.codecs).tolist()
        self.bytes_admitted = [0] * t  # new KVs written, per tier
        self.bytes_moved = [0] * t  # existing KVs written elsewhere or recompressed, per tier
        self.moves = 0
        self.drops = 0
        self._detached: dict[int, int] = {}  # context -> codec of its copy while it moves

    def size(self, i: int, c: int) -> int:
        return self.sizes[i][c]

    def fits(self, i: int, t: int, c: int) -> bool:
        return self.used[t] + self.sizes[i][c] <= self.capacity[t]

    def detach(self, i: int) -> None:
        """Take context i's copy off its tier to place it elsewhere (a move, not a new KV)."""
        t0, c0 = int(self.tier[i]), int(self.codec[i])
        if t0 < 0:
            return
        self._detached[i] = c0
        self.used[t0] -= self.sizes[i][c0]
        self.tier[i] = DROPPED

    def place(self, i: int, t: int, c: int) -> None:
        """Put context i on tier t at codec c; t = DROPPED drops it. A context with no copy
        (not stored, not detached) is admitted from a new full KV; any other is moved."""
        t0, c0 = int(self.tier[i]), int(self.codec[i])
        moved_from = self._detached.pop(i, None)
        if t0 >= 0:
            if (t0, c0) == (t, c):
                return
            self.used[t0] -= self.sizes[i][c0]
            moved_from = c0
        if t < 0:
            self.tier[i], self.codec[i] = DROPPED, -1
            self.drops += moved_from is not None
            return
        if moved_from is not None and not self._derivable[moved_from][c]:
            raise CapacityError(f"context {i}: {self.catalog.codecs[c]} is not reachable from {self.catalog.codecs[moved_from]}")
        size = self.sizes[i][c]
        self.used[t] += size
        if self.used[t] > self.capacity[t]:
            raise CapacityError(f"tier {self.catalog.tiers[t]} over capacity: {self.used[t]} > {self.capacity[t]}")
        self.tier[i], self.codec[i] = t, c
        if moved_from is None:
            self.bytes_admitted[t] += size
        else:
            self.bytes_moved[t] += size
            self.moves += 1

    def apply(self, rows, tiers, codecs, *, check: bool = True) -> None:
        """Move many contexts at once (a plan), checking capacity after all of them: a plan
        may fill a tier with one move that another move of the same plan makes room for.
        check=False leaves the check to the caller (a plan relieving one tier at a time)."""
        capacity, self.capacity = self.capacity, [1 << 62] * len(self.capacity)
        try:
            for i, t, c in zip(rows, tiers, codecs, strict=True):
                self.place(i, t, c)
        finally:
            self.capacity = capacity
        if check:
            self.check()

    def check(self) -> None:
        for t, (used, cap) in enumerate(zip(self.used, self.capacity, strict=True)):
            if used > cap:
                raise CapacityError(f"tier {self.catalog.tiers[t]} over capacity after a plan: {used} > {cap}")

    def stored_rows(self) -> np.ndarray:
        return np.flatnonzero(self.tier >= 0)

    def rows_on(self, t: int) -> np.ndarray:
        return np.flatnonzero(self.tier == t)


class Policy:
    """Decides placements; the simulator keeps the books. Subclasses override the hooks."""

    name = "policy"
    family = "other"  # prefill | lru | fixed | evicpress | exact | placement-only
    sane = True  # recompute instead of loading more slowly than recomputing
    codec: str | None = None  # the one codec a fixed policy uses
    alpha: float | None = None

    def setup(self, sim: Simulator) -> None:
        self.sim = sim

    def touch(self, i: int, now: float) -> None:
        """Every request, before it is served (frequency, recency)."""

    def hit(self, i: int, now: float) -> None:
        """The request was served from context i's stored copy."""

    def miss(self, i: int, now: float) -> None:
        """The request recomputed context i's KV; the policy may store it."""

    def tick(self, now: float) -> None:
        """Every `tick_requests` requests (periodic re-planning)."""

    tick_requests = 0  # 0: never

    def menu(self) -> tuple[str, ...]:
        """The codecs this policy may store a context in (after setup): a stored context must
        carry the token scores they need (queueing charges KVzip's pass for them)."""
        return () if self.codec is None else (self.codec,)

    def stats(self) -> dict:
        return {}


@dataclass(frozen=True, eq=False)
class RunResult:
    policy: str
    family: str
    codec: str | None
    alpha: float | None
    tiers: tuple[str, ...]
    served_tier: np.ndarray  # [R] tier index, MISS or RECOMPUTE
    served_codec: np.ndarray  # [R] codec index, -1 for misses
    ttft_s: np.ndarray  # [R]
    quality: np.ndarray  # [R]
    warmup: int  # leading requests left out of the statistics
    bytes_admitted: int
    bytes_moved: int
    bytes_loaded: int
    moves: int
    drops: int
    wall_s: float
    extra: dict = field(default_factory=dict)
    # [R] where a miss's new KV was admitted (tier, codec), DROPPED / -1 when it was not stored
    # (hits, and misses the policy did not keep); None: not recorded (a live run)
    admitted_tier: np.ndarray | None = None
    admitted_codec: np.ndarray | None = None
    menu: tuple[str, ...] = ()  # Policy.menu: the codecs the run could store contexts in

    @property
    def measured(self) -> slice:
        return slice(self.warmup, None)

    @property
    def quality_mean(self) -> float:
        """Mean quality of the measured requests (nan when none is measured)."""
        q = self.quality[self.measured]
        return float(q.mean()) if len(q) else float("nan")

    def summary(self) -> dict:
        ttft, served = self.ttft_s[self.measured], self.served_tier[self.measured]
        n = max(1, len(ttft))
        return {
            "policy": self.policy,
            "family": self.family,
            "codec": self.codec,
            "alpha": self.alpha,
            "requests": int(len(ttft)),
            "ttft_mean_s": float(ttft.mean()) if len(ttft) else float("nan"),
            "ttft_p50_s": float(np.percentile(ttft, 50)) if len(ttft) else float("nan"),
            "ttft_p99_s": float(np.percentile(ttft, 99)) if len(ttft) else float("nan"),
            "quality_mean": self.quality_mean,
            "hit_rate": {t: float((served == k).sum() / n) for k, t in enumerate(self.tiers)},
            "miss_rate": float((served == MISS).sum() / n),
            "recompute_rate": float((served == RECOMPUTE).sum() / n),
            "bytes_admitted": self.bytes_admitted,
            "bytes_moved": self.bytes_moved,
            "bytes_loaded": self.bytes_loaded,
            "moves": self.moves,
            "drops": self.drops,
            "wall_s": round(self.wall_s, 3),
            **self.extra,
        }


def replay(
    policy: Policy,
    catalog: Catalog,
    trace: Trace,
    *,
    warmup: float = 0.1,
    progress: Callable[[int], None] | None = None,
    progress_every: int = 2000,
) -> RunResult:
    """Serve `trace` with `policy`; returns per-request delays and qualities."""
    start = time.perf_counter()
    sim = Simulator(catalog)
    policy.setup(sim)
    n_req = len(trace)
    served_t = np.empty(n_req, dtype=np.int64)
    served_c = np.empty(n_req, dtype=np.int64)
    admitted_t = np.full(n_req, DROPPED, dtype=np.int64)
    admitted_c = np.full(n_req, -1, dtype=np.int64)
    ctx, at = trace.context.tolist(), trace.at_s.tolist()
    tier, codec = sim.tier, sim.codec  # the simulator mutates these arrays in place
    touch, hit, miss, tick = policy.touch, policy.hit, policy.miss, policy.tick
    every = policy.tick_requests or n_req + 1
    for k in range(n_req):
        i, now = ctx[k], at[k]
        touch(i, now)
        t = tier[i]
        if t >= 0:
            served_t[k], served_c[k] = t, codec[i]
            hit(i, now)
        else:
            served_t[k], served_c[k] = MISS, -1
            miss(i, now)
            t = tier[i]
            if t >= 0:  # the policy kept the new KV: a store after the first token
                admitted_t[k], admitted_c[k] = t, codec[i]
        if (k + 1) % every == 0:
            tick(now)
        if progress is not None and (k + 1) % progress_every == 0:
            progress(progress_every)
    if progress is not None:
        progress(n_req % progress_every)
    ttft, quality, served_t, loaded = _outcomes(catalog, trace, served_t, served_c, policy.sane)
    return RunResult(
        policy=policy.name,
        family=policy.family,
        codec=policy.codec,
        alpha=policy.alpha,
        tiers=catalog.tiers,
        served_tier=served_t,
        served_codec=served_c,
        ttft_s=ttft,
        quality=quality,
        warmup=int(warmup * n_req),
        bytes_admitted=int(sum(sim.bytes_admitted)),
        bytes_moved=int(sum(sim.bytes_moved)),
        bytes_loaded=loaded,
        moves=sim.moves,
        drops=sim.drops,
        wall_s=time.perf_counter() - start,
        extra=policy.stats(),
        admitted_tier=admitted_t,
        admitted_codec=admitted_c,
        menu=policy.menu(),
    )


def _outcomes(catalog: Catalog, trace: Trace, served_t, served_c, sane: bool):
    """Delays and qualities of every request at once; hits slower than a recompute are
    recomputed by a sane policy."""
    ctx, q_tokens = trace.context, trace.query_tokens
    ttft = catalog.miss_ttft(ctx, q_tokens)
    quality = np.ones(len(ctx))
    hits = np.flatnonzero(served_t >= 0)
    hit_ttft = catalog.hit_ttft(ctx[hits], served_c[hits], served_t[hits], q_tokens[hits])
    served_t = served_t.copy()
    if sane:
        slower = hit_ttft > ttft[hits]
        served_t[hits[slower]] = RECOMPUTE
        hits, hit_ttft = hits[~slower], hit_ttft[~slower]
    ttft[hits] = hit_ttft
    quality[hits] = catalog.truth[served_c[hits], ctx[hits]]
    loaded = int(catalog.stored_bytes[served_c[hits], ctx[hits]].sum())
    return ttft, quality, served_t, loaded
