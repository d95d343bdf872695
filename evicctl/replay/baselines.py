"""The eviction policies a user would pick instead of ours, and the bound no policy beats.

Every baseline here is a multi-tier cache at one codec (`none` by default, `<kind>:<codec>`
for one compression codec, as `fixed:<codec>` is for LRU): a context enters the fastest
tier it may live on, each tier's victims spill to the tier below and the bottom tier's are
dropped; a hit on a lower tier promotes the context to the top. They differ only in which
resident is the victim and whether a newcomer is let in:

- `arc`: Adaptive Replacement Cache (Megiddo & Modha, FAST'03) per tier, in bytes: a
  recency list T1 and a frequency list T2 with ghost lists B1/B2 that move the target size
  of T1. vLLM ships it for CPU KV offloading.
- `gdsf`: GreedyDual-Size-Frequency (Cherkasova 1998) per tier: priority
  L + count * benefit / size, where benefit is the seconds a hit on that tier saves over a
  recompute, and L the priority of the last victim (aging). Size- and cost-aware.
- `tinylfu`: LRU per tier behind a TinyLFU admission filter (Einziger et al., TOS 2017): a
  newcomer enters a full tier only if it was requested more often than every victim it
  would push out; counts are halved every 10x the tiers' population of requests. Exact
  counters stand in for the count-min sketch (no collisions: the filter at its best).

All are sane like `lru`: a context never lives on a tier that loads it more slowly than a
recompute (it goes lower or is dropped), and such a hit is served as a recompute.

- `ideal`: the bound. Every request after a context's first is served from the fastest
  tier, with the codec that loads fastest among those whose true quality for that context
  meets the quality target; capacity is ignored. It bounds policies that keep every context
  at the target; one that meets the target only on average (some contexts below it) could
  in principle undercut it.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict

import numpy as np

from evicctl.manager.codecs.codec import get_codec
from evicctl.manager.placer.place import DROPPED
from evicctl.replay.replay import Policy, Simulator

BASELINE_KINDS = ("arc", "gdsf", "tinylfu")
BASELINE_CODECS = ("int8", "int4")  # always run: what a user of any engine can pick (no scores needed)
QUALITY_TARGET = 0.97  # issue 16: the quality every comparison is made at
TINYLFU_RESET_FACTOR = 10  # Caffeine's sample size: 10x the cache's population
BIG = 1 << 62


class TieredCache(Policy):
    """A cascade of tiers at one codec; subclasses say who leaves and who may enter."""

    kind = "tiered"

    def __init__(self, codec: str = "none") -> None:
        self.codec_name = get_codec(codec).name
        self.family = self.kind
        self.name = self.kind if self.codec_name == "none" else f"{self.kind}:{self.codec_name}"
        self.codec = None if self.codec_name == "none" else self.codec_name

    def setup(self, sim: Simulator) -> None:
        super().setup(sim)
        cat = sim.catalog
        self.c = cat.codec_index(self.codec_name)
        self.n_tiers = len(cat.tiers)
        # tiers context i may live on: loading from there is no slower than recomputing it
        self.ok = (cat.ttft_s[:, self.c, :] <= cat.miss_ttft_s[None, :]).T.tolist()  # [N][T]

    def hit(self, i: int, now: float) -> None:
        t = int(self.sim.tier[i])
        if t == 0:
            self._touch_top(i)
            return
        self._leave(t, i)
        self.sim.detach(i)  # promoted: its old tier's bytes are free for the spill below
        self._put(i, 0)

    def miss(self, i: int, now: float) -> None:
        self._put(i, 0)

    def _put(self, i: int, t: int) -> None:
        """Context i into the first tier from t down that may hold it and lets it in."""
        sim, size = self.sim, self.sim.size(i, self.c)
        for u in range(t, self.n_tiers):
            if not (self.ok[i][u] and size <= sim.capacity[u]):
                continue
            self._arriving(u, i, size)
            victims = self._make_room(u, i, size)
            if victims is None:
                continue  # refused here: try the tier below
            for v in victims:
                sim.detach(v)
            sim.place(i, u, self.c)
            self._enter(u, i, size)
            for v in victims:
                self._put(v, u + 1)
            return
        sim.place(i, DROPPED, -1)

    def _make_room(self, t: int, i: int, size: int) -> list[int] | None:
        """Residents of tier t taken out (not yet detached) so that `size` bytes fit; None
        refuses the newcomer. Default: evict until it fits."""
        sim, victims = self.sim, []
        free = sim.capacity[t] - sim.used[t]
        while free < size:
            v = self._evict(t)
            victims.append(v)
            free += sim.size(v, self.c)
        return victims

    # hooks ------------------------------------------------------------------
    def _arriving(self, t: int, i: int, size: int) -> None:
        """i is about to enter tier t (before room is made)."""

    def _enter(self, t: int, i: int, size: int) -> None:
        raise NotImplementedError

    def _leave(self, t: int, i: int) -> None:
        raise NotImplementedError

    def _evict(self, t: int) -> int:
        raise NotImplementedError

    def _touch_top(self, i: int) -> None:
        raise NotImplementedError


class _ArcLists:
    """One tier's ARC state in bytes: T1 (seen once), T2 (seen again), ghosts B1/B2, and
    `p`, the target bytes of T1. Each list maps context -> bytes, least recent first."""

    def __init__(self, capacity_bytes: int) -> None:
        self.c = capacity_bytes
        self.p = 0.0
        self.t1: OrderedDict[int, int] = OrderedDict()
        self.t2: OrderedDict[int, int] = OrderedDict()
        self.b1: OrderedDict[int, int] = OrderedDict()
        self.b2: OrderedDict[int, int] = OrderedDict()
        self.bytes = {"t1": 0, "t2": 0, "b1": 0, "b2": 0}
        self.to_t2: set[int] = set()  # arrivals found in a ghost list: they enter T2
        self.ghost_hit_b2 = False

    def arriving(self, i: int, size: int) -> None:
        """ARC's adaptation on a request that missed this tier (case II/III of the paper)."""
        b = self.bytes
        self.ghost_hit_b2 = False
        if i in self.b1:  # recency was evicted too early: grow T1's target
            delta = size * max(1.0, b["b2"] / max(b["b1"], 1))
            self.p = min(float(self.c), self.p + delta)
            b["b1"] -= self.b1.pop(i)
            self.to_t2.add(i)
        elif i in self.b2:  # frequency was evicted too early: shrink T1's target
            delta = size * max(1.0, b["b1"] / max(b["b2"], 1))
            self.p = max(0.0, self.p - delta)
            b["b2"] -= self.b2.pop(i)
            self.to_t2.add(i)
            self.ghost_hit_b2 = True

    def evict(self) -> int:
        """ARC's REPLACE: T1's LRU when T1 is over its target, else T2's; into its ghost list."""
        b = self.bytes
        over = b["t1"] > self.p or (self.ghost_hit_b2 and b["t1"] >= self.p)
        if self.t1 and (over or not self.t2):
            i, size = self.t1.popitem(last=False)
            b["t1"] -= size
            self.b1[i] = size
            b["b1"] += size
        else:
            i, size = self.t2.popitem(last=False)
            b["t2"] -= size
            self.b2[i] = size
            b["b2"] += size
        return i

    def enter(self, i: int, size: int) -> None:
        if i in self.to_t2:
            self.to_t2.discard(i)
            self.t2[i] = size
            self.bytes["t2"] += size
        else:
            self.t1[i] = size
            self.bytes["t1"] += size
        self._trim_ghosts()

    def touch(self, i: int) -> None:
        if i in self.t1:
            size = self.t1.pop(i)
            self.bytes["t1"] -= size
            self.t2[i] = size
            self.bytes["t2"] += size
        else:
            self.t2.move_to_end(i)

    def leave(self, i: int) -> None:
        """i leaves the tier by promotion (not an eviction: no ghost)."""
        for key, lst in (("t1", self.t1), ("t2", self.t2)):
            size = lst.pop(i, None)
            if size is not None:
                self.bytes[key] -= size
                return

    def _trim_ghosts(self) -> None:
        b = self.bytes
        while self.b1 and b["t1"] + b["b1"] > self.c:
            b["b1"] -= self.b1.popitem(last=False)[1]
        while self.b2 and sum(b.values()) > 2 * self.c:
            b["b2"] -= self.b2.popitem(last=False)[1]


class Arc(TieredCache):
    kind = "arc"

    def setup(self, sim: Simulator) -> None:
        super().setup(sim)
        self.lists = [_ArcLists(c) for c in sim.capacity]

    def _arriving(self, t: int, i: int, size: int) -> None:
        self.lists[t].arriving(i, size)

    def _enter(self, t: int, i: int, size: int) -> None:
        self.lists[t].enter(i, size)

    def _leave(self, t: int, i: int) -> None:
        self.lists[t].leave(i)

    def _evict(self, t: int) -> int:
        return self.lists[t].evict()

    def _touch_top(self, i: int) -> None:
        self.lists[0].touch(i)


class Gdsf(TieredCache):
    """Per tier a min-heap of priorities with lazy deletion; counts persist across evictions
    (a context's popularity is remembered, the stronger variant on a stationary workload)."""

    kind = "gdsf"

    def setup(self, sim: Simulator) -> None:
        super().setup(sim)
        cat = sim.catalog
        saved_s = cat.miss_ttft_s[None, :] - cat.ttft_s[:, self.c, :]  # [T, N] seconds a hit saves
        size = cat.stored_bytes[self.c].astype(float)
        self.value = (np.maximum(saved_s, 1e-9) / size[None, :]).tolist()  # [T][N] seconds saved per byte
        self.count = [0] * cat.n_contexts
        self.aging = [0.0] * self.n_tiers  # L: priority of the tier's last victim
        self.heap: list[list[tuple[float, int]]] = [[] for _ in range(self.n_tiers)]
        self.prio: list[dict[int, float]] = [{} for _ in range(self.n_tiers)]

    def touch(self, i: int, now: float) -> None:
        self.count[i] += 1

    def _push(self, t: int, i: int) -> None:
        h = self.aging[t] + self.count[i] * self.value[t][i]
        self.prio[t][i] = h
        heap = self.heap[t]
        heapq.heappush(heap, (h, i))
        if len(heap) > 4 * len(self.prio[t]) + 1024:  # drop stale entries now and then
            self.heap[t] = [(p, j) for j, p in self.prio[t].items()]
            heapq.heapify(self.heap[t])

    def _enter(self, t: int, i: int, size: int) -> None:
        self._push(t, i)

    def _leave(self, t: int, i: int) -> None:
        del self.prio[t][i]

    def _touch_top(self, i: int) -> None:
        self._push(0, i)

    def _evict(self, t: int) -> int:
        heap, prio = self.heap[t], self.prio[t]
        while True:
            h, i = heapq.heappop(heap)
            if prio.get(i) == h:
                del prio[i]
                self.aging[t] = h
                return i


class TinyLfu(TieredCache):
    """LRU per tier; a newcomer to a full tier must have been requested more often than
    every LRU victim it would push out, or it tries the tier below."""

    kind = "tinylfu"

    def setup(self, sim: Simulator) -> None:
        super().setup(sim)
        cat = sim.catalog
        self.order = [OrderedDict() for _ in cat.tiers]  # per tier: context -> bytes, LRU first
        self.count = [0] * cat.n_contexts
        mean_bytes = float(cat.stored_bytes[self.c].mean())
        population = sum(sim.capacity) / mean_bytes
        self.reset_every = max(100, int(TINYLFU_RESET_FACTOR * population))
        self.seen = 0
        self.refused = 0

    def touch(self, i: int, now: float) -> None:
        self.count[i] += 1
        self.seen += 1
        if self.seen >= self.reset_every:  # TinyLFU's reset: halve every counter (freshness)
            self.count = [k >> 1 for k in self.count]
            self.seen = 0

    def _make_room(self, t: int, i: int, size: int) -> list[int] | None:
        sim, order = self.sim, self.order[t]
        need = size - (sim.capacity[t] - sim.used[t])
        victims = []
        for v, v_size in order.items():  # LRU first
            if need <= 0:
                break
            if self.count[v] >= self.count[i]:
                self.refused += 1
                return None
            victims.append(v)
            need -= v_size
        for v in victims:
            del order[v]
        return victims

    def _enter(self, t: int, i: int, size: int) -> None:
        self.order[t][i] = size

    def _leave(self, t: int, i: int) -> None:
        del self.order[t][i]

    def _touch_top(self, i: int) -> None:
        self.order[0].move_to_end(i)

    def stats(self) -> dict:
        return {"admissions_refused": self.refused}


class Ideal(Policy):
    """The bound (see the module docstring): no capacity, no misses after first use, the
    fastest codec meeting the quality target by the truth."""

    name = family = "ideal"

    def __init__(self, quality_target: float = QUALITY_TARGET) -> None:
        self.quality_target = quality_target

    def setup(self, sim: Simulator) -> None:
        super().setup(sim)
        cat = sim.catalog
        ttft = np.where(cat.truth >= self.quality_target, cat.ttft_s[0], np.inf)  # [C, N]
        ttft[cat.codec_index("none")] = cat.ttft_s[0, cat.codec_index("none")]  # whole always qualifies
        self.best_codec = ttft.argmin(axis=0).tolist()
        sim.capacity[0] = BIG  # the bound ignores capacity

    def miss(self, i: int, now: float) -> None:
        self.sim.place(i, 0, self.best_codec[i])

    def menu(self) -> tuple[str, ...]:
        return ()  # a bound: charged no token scoring, whatever codec it serves


CLASSES = {"arc": Arc, "gdsf": Gdsf, "tinylfu": TinyLfu}


def make_baseline(spec: str) -> Policy | None:
    """`arc`, `gdsf`, `tinylfu`, each optionally `:<codec>`; None for any other name."""
    kind, _, codec = spec.partition(":")
    cls = CLASSES.get(kind)
    if cls is None:
        return None
    return cls(codec or "none")


def baseline_specs(extra_codecs: tuple[str, ...] = ()) -> list[str]:
    """Every eviction baseline, whole, at int8 and int4, and at each of `extra_codecs` (the
    best single codec of the measured menu: best_single_codec)."""
    codecs = dict.fromkeys((*BASELINE_CODECS, *extra_codecs))
    return [f"{k}{suffix}" for k in BASELINE_KINDS for suffix in ("", *(f":{c}" for c in codecs))]


def best_single_codec(catalog, target: float = QUALITY_TARGET) -> str | None:
    """The codec a user who must pick one for every context would pick: the fewest stored
    bytes over the workload among those whose mean true quality meets `target` (with the
    menu measured on the real model: kvzip@0.25+int4, .975 at 0.24 of fp16)."""
    meets = [k for k, c in enumerate(catalog.codecs) if c != "none" and catalog.truth[k].mean() >= target]
    if not meets:
        return None
    return catalog.codecs[min(meets, key=lambda k: int(catalog.stored_bytes[k].sum()))]


def expand_best_fixed(specs: list[str], codecs: tuple[str, ...]) -> list[str]:
    """`best-fixed` is a sweep: LRU at every codec of the catalog (the comparison picks, in
    hindsight, the one with the lowest TTFT at the quality target)."""
    if "best-fixed" not in specs:
        return specs
    out = [s for s in specs if s != "best-fixed"]
    have = {s.removeprefix("fixed:") for s in out if s.startswith("fixed:")}
    if "lru" not in out:
        out.append("lru")
    out += [f"fixed:{c}" for c in codecs if c != "none" and c not in have]
    return out
