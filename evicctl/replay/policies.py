"""The policies a replay compares. They differ only in decisions; sizes, delays, qualities
and the books are the catalog's and the simulator's.

- `prefill`: no reuse; every request prefills its context.
- `lru`: no compression; LRU across tiers (a hit moves to the top tier, each tier's least
  recently used context spills to the tier below, the bottom tier's is dropped), what
  LMCache, vLLM offloading and HiCache do by default. Sane: a tier whose load is slower than
  a recompute is skipped (the context is dropped instead), and such a hit recomputes.
- `lru-plain`: the same without the sanity rule (a strawman, reported for reference).
- `fixed:<codec>`: `lru` with every context stored at one codec (kvpress-style).
- `evicpress`: the manager's placer (evicctl.manager.placer.place). A new KV gets its
  best-utility option (`none` at a context's first admission: as in the engine, its profile
  is measured after the manager has stored it). When that would overflow a tier, the placer
  relieves the tier (compress in place or demote, greedy by utility loss per byte), to
  1 - HEADROOM of its capacity so that the next admissions batch. Every TICK_REQUESTS
  requests it re-plans every stored context and may promote (rebalance), as the manager's
  re-plan timer does. Utility uses the manager's decayed access rate (evicctl.manager.freq)
  and the profiles' estimates, never the truth.
- `evicpress@A`: the same with alpha = A seconds of TTFT per unit of quality.
- `exact`: `evicpress` with every re-plan solved exactly (evicctl.manager.placer.exact.solve_exact,
  a MILP; small instances), recording the greedy's utility on the same problem.
- `placement-only`: `evicpress` with only the `none` codec (what placement alone wins).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections import OrderedDict

import numpy as np

from evicctl.errors import UnknownNameError, UsageError
from evicctl.manager.codecs.codec import get_codec
from evicctl.manager.codecs.names import parse_codec_name
from evicctl.manager.freq import ESTIMATORS, RateTable
from evicctl.manager.placer.place import DROPPED, NEW, PlacementProblem, derivable_matrix, place
from evicctl.replay.baselines import QUALITY_TARGET, Ideal, baseline_specs, make_baseline
from evicctl.replay.replay import Policy, Simulator

FIXED_SWEEP = tuple(f"{s}@{r}" for s in ("keydiff", "knorm", "snapkv") for r in (0.25, 0.5, 0.75)) + ("int8", "int4")
EXACT_MAX_CONTEXTS = 400  # the MILP per re-plan is for small instances
HALF_LIFE_S = 300.0  # ManagerConfig.freq_half_life_s
HEADROOM = 0.1  # a pressure re-plan frees this share of the admitting tier, so admissions batch
SPILL_HEADROOM = 0.02  # and this share of a tier below it that the spill overflowed
TICK_REQUESTS = 1000  # periodic re-plan (the manager's replan timer, in requests)
REPROFILE_DROP = 0.3  # ProfilerSettings.reprofile_drop: online quality this far below the profile
REPROFILE_HITS = 12  # compressed hits before it shows: 3 online samples at a 25% sample rate
# ours without the kvzip codecs: an engine not configured for KVzip's pass (queueing charges
# the pass to every run whose menu holds a kvzip codec)
NO_KVZIP = "-nokvzip"
POLICY_FORMS = ("prefill", "lru", "lru-plain", "fixed:<codec>", "evicpress", "evicpress@<alpha>",
                f"evicpress{NO_KVZIP}[@<alpha>]", "exact", "placement-only",
                "arc[:<codec>]", "gdsf[:<codec>]", "tinylfu[:<codec>]", "best-fixed", "ideal")


class Prefill(Policy):
    name = family = "prefill"


class Lru(Policy):
    """LRU across tiers at one codec; see the module docstring."""

    family = "lru"

    def __init__(self, codec: str = "none", *, sane: bool = True, name: str | None = None) -> None:
        self.codec_name = get_codec(codec).name
        self.sane = sane  # served: a hit slower than a recompute recomputes
        self.skip_slow_tiers = sane  # placed: never on a tier that loads slower than a recompute
        self.name = name or ("lru" if sane else "lru-plain")
        if self.codec_name != "none":
            self.family, self.codec = "fixed", self.codec_name

    def setup(self, sim: Simulator) -> None:
        super().setup(sim)
        cat = sim.catalog
        self.c = cat.codec_index(self.codec_name)
        self.order = [OrderedDict() for _ in cat.tiers]  # per tier: context -> None, LRU first
        if self.skip_slow_tiers:  # tiers this context may live on: loading no slower than recomputing
            self.ok = (cat.ttft_s[:, self.c, :] <= cat.miss_ttft_s[None, :]).T.tolist()  # [N][T]
        else:
            self.ok = [[True] * len(cat.tiers)] * cat.n_contexts

    def hit(self, i: int, now: float) -> None:
        t = self.sim.tier[i]
        if t == 0:
            self.order[0].move_to_end(i)
            return
        del self.order[t][i]
        self.sim.detach(i)  # promoted: its old tier's bytes are free for the spill below
        self._put(i, 0)

    def miss(self, i: int, now: float) -> None:
        self._put(i, 0)

    def _put(self, i: int, t: int) -> None:
        """Context i goes to the MRU end of the first allowed tier from t down, or is dropped."""
        sim, n_tiers, size = self.sim, len(self.order), self.sim.size(i, self.c)
        while t < n_tiers and not (self.ok[i][t] and size <= sim.capacity[t]):
            t += 1
        if t == n_tiers:
            sim.place(i, DROPPED, -1)
            return
        while sim.used[t] + size > sim.capacity[t]:  # spill this tier's LRU contexts down
            victim, _ = self.order[t].popitem(last=False)
            sim.detach(victim)
            self._put(victim, t + 1)
        sim.place(i, t, self.c)
        self.order[t][i] = None


class PlacerPolicy(Policy):
    """The manager's placer (greedy or exact) on the stored contexts; see the module docstring.

    Pressure is relieved tier by tier, top down, each with the placer on that tier's residents
    (plus the context being admitted): the greedy relieves a tier looking only at the
    contexts on it (their exits are chosen by value, whatever the tiers below hold), so this
    is the decision a plan over every context makes, at the cost of the few hundred rows on
    the tier instead of all of them. A relieved tier is brought down to (1 - headroom) of
    its capacity, so the next admissions fit without a re-plan.
    """

    family = "evicpress"

    def __init__(
        self,
        name: str,
        *,
        alpha: float,
        codecs: tuple[str, ...] | None = None,
        solver: str = "greedy",
        half_life_s: float = HALF_LIFE_S,
        headroom: float = HEADROOM,
        spill_headroom: float = SPILL_HEADROOM,
        tick_requests: int = TICK_REQUESTS,
        exact_time_limit_s: float = 20.0,
        freq_options: dict | None = None,
        without_scorers: tuple[str, ...] = (),
    ) -> None:
        self.name, self.alpha, self.solver = name, float(alpha), solver
        self.codec_names = codecs
        self.without_scorers = without_scorers  # menu codecs dropping with these scorers are left out
        self.half_life_s, self.headroom, self.spill_headroom = half_life_s, headroom, spill_headroom
        self.tick_requests = tick_requests
        self.exact_time_limit_s = exact_time_limit_s
        self.freq_options = freq_options or {}  # RateTable settings (evicctl.manager.freq.ESTIMATORS)
        self.family = {"greedy": "evicpress", "exact": "exact"}[solver]
        if codecs == ("none",):
            self.family = "placement-only"

    def menu(self) -> tuple[str, ...]:
        return self.codecs

    def setup(self, sim: Simulator) -> None:
        super().setup(sim)
        cat = sim.catalog
        names = [c for c in self.codec_names or cat.codecs if parse_codec_name(c).scorer not in self.without_scorers]
        self.cidx = np.array([cat.codec_index(c) for c in names])  # policy codec -> catalog codec
        self.codecs = tuple(cat.codecs[k] for k in self.cidx)
        self.local = np.full(len(cat.codecs) + 1, -1)  # catalog codec -> policy codec; [-1] = -1
        self.local[self.cidx] = np.arange(len(self.cidx))
        self.is_none = np.array([c == "none" for c in self.codecs])
        self.derivable = derivable_matrix(self.codecs)
        # The manager's access-rate estimator (evicctl.manager.freq, DecayedRate's core), over context indices.
        self.freq = RateTable(self.half_life_s, cat.n_contexts, **self.freq_options)
        # The catalog's arrays restricted to this policy's codecs, once: [C', N], [T, C', N].
        self.stored_bytes = np.ascontiguousarray(cat.stored_bytes[self.cidx])
        self.quality = np.ascontiguousarray(cat.estimate[self.cidx])
        self.ttft_s = np.ascontiguousarray(cat.ttft_s[:, self.cidx], dtype=np.float32)  # as the manager prices it
        # Re-profiling: the profiler scores sampled compressed hits online, and re-measures a
        # context whose online quality falls REPROFILE_DROP below its profile; the estimate
        # then becomes the truth. Only (context, codec) pairs that far off can trigger it.
        over = (cat.truth[self.cidx] < self.quality - REPROFILE_DROP) & ~self.is_none[:, None]
        self.watch = {(int(i), int(self.cidx[c])): 0 for c, i in zip(*np.nonzero(over), strict=True)}
        self.reprofiles = 0
        self.replans = self.pressure_replans = 0
        self.plan_s = 0.0
        self.gaps: list[float] = []
        # A context's first admission is unprofiled (`none` only): the profiler measures it
        # after the manager has stored it, as in the engine; later admissions use its profile.
        self.profiled = np.zeros(cat.n_contexts, dtype=bool)
        # Each context's admission option: what the placer gives a new KV with room to spare.
        everyone, room = np.arange(cat.n_contexts), np.full(len(cat.tiers), 2.0**62)
        first = self._plan(self._problem(everyone, None, room, fresh=everyone))
        self.profiled[:] = True
        best = self._plan(self._problem(everyone, None, room, fresh=everyone))
        self.profiled[:] = False
        self.replans = 0
        self.first_tier, self.first_codec = first[0].tolist(), first[1].tolist()
        self.best_tier, self.best_codec = best[0].tolist(), best[1].tolist()

    def touch(self, i: int, now: float) -> None:
        self.freq.record(i, now)

    def rates(self, rows: np.ndarray, now: float) -> np.ndarray:
        return self.freq.rates(rows, now)

    def hit(self, i: int, now: float) -> None:
        if not self.watch:
            return
        key = (i, int(self.sim.codec[i]))
        seen = self.watch.get(key)
        if seen is None:
            return
        if seen + 1 < REPROFILE_HITS:
            self.watch[key] = seen + 1
            return
        del self.watch[key]
        c = int(self.local[key[1]])
        self.quality[c, i] = self.sim.catalog.truth[key[1], i]
        self.reprofiles += 1
        row = np.array([i])  # its next admission uses the new profile
        tier, codec = self._plan(self._problem(row, None, np.full(len(self.sim.capacity), 2.0**62), fresh=row))
        self.best_tier[i], self.best_codec[i] = int(tier[0]), int(codec[0])

    def miss(self, i: int, now: float) -> None:
        if self.profiled[i]:
            t, c = self.best_tier[i], self.best_codec[i]
        else:
            t, c = self.first_tier[i], self.first_codec[i]
        if t >= 0:  # else recomputing it beats every stored option
            if self.sim.fits(i, t, c):
                self.sim.place(i, t, c)
            else:
                self.pressure_replans += 1
                if self.solver == "exact":
                    self._replan_all(now, new=i)
                else:
                    self._relieve(t, now, new=i)
        self.profiled[i] = True

    def tick(self, now: float) -> None:
        self._replan_all(now, rebalance=True)

    def stats(self) -> dict:
        out = {"replans": self.replans, "pressure_replans": self.pressure_replans, "plan_s": round(self.plan_s, 3),
               "reprofiles": self.reprofiles}
        if self.gaps:
            gaps = np.array(self.gaps)
            out |= {"exact_gap_mean": float(gaps.mean()), "exact_gap_max": float(gaps.max()), "exact_problems": len(gaps)}
        return out

    # ------------------------------------------------------------ planning

    def _relieve(self, t: int, now: float, new: int | None = None) -> None:
        """Relieve tier t (admitting `new`), then every tier below that ends over capacity."""
        sim, n_tiers = self.sim, len(self.sim.capacity)
        for u in range(t, n_tiers):
            if u > t and sim.used[u] <= sim.capacity[u]:
                continue
            rows = sim.rows_on(u)
            fresh = None
            if u == t and new is not None:
                rows, fresh = np.append(rows, new), np.array([new])
            capacity = np.full(n_tiers, 2.0**62)
            capacity[u] = sim.capacity[u] * (1.0 - (self.headroom if u == t else self.spill_headroom))
            self._apply(rows, self._plan(self._problem(rows, now, capacity, fresh=fresh)), check=False)
        sim.check()

    def _replan_all(self, now: float, *, new: int | None = None, rebalance: bool = False) -> None:
        sim = self.sim
        rows = sim.stored_rows()
        fresh = None
        if new is not None:
            rows, fresh = np.append(rows, new), np.array([new])
        if len(rows) == 0:
            return
        free = np.full(len(sim.capacity), self.spill_headroom)
        free[0] = self.headroom  # admissions land on the top tier
        capacity = np.asarray(sim.capacity, dtype=float) * (1.0 - free)
        self._apply(rows, self._plan(self._problem(rows, now, capacity, fresh=fresh, rebalance=rebalance)))

    def _apply(self, rows: np.ndarray, decision: tuple[np.ndarray, np.ndarray], *, check: bool = True) -> None:
        tier, codec = decision
        sim = self.sim
        changed = np.flatnonzero((tier != sim.tier[rows]) | (codec != sim.codec[rows]))
        sim.apply(rows[changed].tolist(), tier[changed].tolist(), codec[changed].tolist(), check=check)

    def _plan(self, problem: PlacementProblem) -> tuple[np.ndarray, np.ndarray]:
        """(tier, catalog codec) of every row of the problem, by the greedy or the MILP."""
        start = time.perf_counter()
        plan = place(problem)
        tier, codec = plan.tier_index, plan.codec_index
        if self.solver == "exact":
            tier, codec = self._exact(problem, plan)
        self.plan_s += time.perf_counter() - start
        self.replans += 1
        return tier, np.where(codec >= 0, self.cidx[np.maximum(codec, 0)], -1)

    def _exact(self, problem: PlacementProblem, plan) -> tuple[np.ndarray, np.ndarray]:
        from evicctl.manager.placer.exact import solve_exact

        with _c_stdout_silenced():  # HiGHS prints progress lines to fd 1, into -o json
            result = solve_exact(problem, time_limit_s=self.exact_time_limit_s)
        if result.status != "optimal" or (result.option < 0).any():
            return plan.tier_index, plan.codec_index  # no proven optimum in time: keep the greedy
        self.gaps.append((result.total_utility - plan.total_utility) / max(abs(result.total_utility), 1e-12))
        n_tiers, n_stored = len(problem.tiers), len(problem.codecs) * len(problem.tiers)
        dropped = result.option == n_stored
        return (
            np.where(dropped, DROPPED, result.option % n_tiers),
            np.where(dropped, -1, result.option // n_tiers),
        )

    def _problem(self, rows, now, capacity, *, fresh=None, rebalance=False) -> PlacementProblem:
        """The placer's problem over `rows`; `fresh` rows are new full KVs (NEW), `now` None
        means unit frequencies (the admission choice does not depend on them)."""
        sim, cat, cidx = self.sim, self.sim.catalog, self.cidx
        current_t = sim.tier[rows].copy()
        current_c = self.local[sim.codec[rows]]
        if fresh is not None:
            is_new = np.isin(rows, fresh)
            current_t[is_new], current_c[is_new] = NEW, -1
        profiled = np.broadcast_to(self.profiled[rows], (len(cidx), len(rows))) | self.is_none[:, None]
        return PlacementProblem(
            context_ids=cat.context_ids[rows],
            freq=np.ones(len(rows)) if now is None else self.rates(rows, now),
            tokens=cat.tokens[rows],
            codecs=self.codecs,
            tiers=cat.tiers,
            capacity_bytes=np.minimum(np.asarray(capacity, dtype=float), 2.0**62).astype(np.int64),
            stored_bytes=self.stored_bytes.take(rows, axis=1),
            quality=self.quality.take(rows, axis=1),
            profiled=profiled,
            ttft_s=self.ttft_s.take(rows, axis=2),
            miss_ttft_s=cat.miss_ttft_s[rows],
            alpha=self.alpha,
            current_tier=current_t,
            current_codec=np.where(current_t >= 0, current_c, -1),
            derivable=self.derivable,
            rebalance=rebalance,
        )


@contextlib.contextmanager
def _c_stdout_silenced():
    """Point file descriptor 1 at /dev/null for a while (C libraries write there directly)."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def make_policy(spec: str, *, alpha: float, half_life_s: float = HALF_LIFE_S, quality_target: float = QUALITY_TARGET,
                freq_estimator: str = "learned") -> Policy:
    """A policy from its name (see POLICY_FORMS); `alpha` is the scenario's default,
    half_life_s the access-rate half-life of the placer policies (the manager's setting) and
    quality_target the one `ideal` serves at. `best-fixed` is a sweep (run.expand_specs)."""
    spec = spec.strip()
    if freq_estimator not in ESTIMATORS:
        raise UnknownNameError("frequency estimator", freq_estimator, list(ESTIMATORS))
    freq_options = ESTIMATORS[freq_estimator]
    baseline = make_baseline(spec)
    if baseline is not None:
        return baseline
    if spec == "ideal":
        return Ideal(quality_target)
    if spec == "prefill":
        return Prefill()
    if spec in ("lru", "lru-plain"):
        return Lru(sane=spec == "lru")
    if spec.startswith("fixed:"):
        codec = get_codec(spec.removeprefix("fixed:")).name
        return Lru(codec, name=f"fixed:{codec}")
    base, _, alpha_text = spec.partition("@")
    if base in ("evicpress", f"evicpress{NO_KVZIP}"):
        a = alpha
        if alpha_text:
            try:
                a = float(alpha_text)
            except ValueError:
                raise UsageError(f"policy {spec!r}: alpha must be a number of seconds, e.g. evicpress@2") from None
            if a < 0:
                raise UsageError(f"policy {spec!r}: alpha must be >= 0")
        name = base if not alpha_text else f"{base}@{a:g}"
        without = ("kvzip",) if base.endswith(NO_KVZIP) else ()
        return PlacerPolicy(name, alpha=a, half_life_s=half_life_s, freq_options=freq_options, without_scorers=without)
    if spec == "exact":
        return PlacerPolicy("exact", alpha=alpha, solver="exact", half_life_s=half_life_s, freq_options=freq_options)
    if spec == "placement-only":
        return PlacerPolicy("placement-only", alpha=alpha, codecs=("none",), half_life_s=half_life_s, freq_options=freq_options)
    raise UnknownNameError("policy", spec, POLICY_FORMS)


def default_policies(
    n_contexts: int, alpha: float, alpha_curve: tuple[float, ...], best_codec: str | None = None
) -> list[str]:
    """Every baseline (each eviction also at `best_codec`, the best single codec of the
    menu), the fixed sweep, ours at a few alphas (a curve), exact when small."""
    specs = ["prefill", "lru", "lru-plain", *(f"fixed:{c}" for c in FIXED_SWEEP), "evicpress"]
    specs += [f"evicpress@{alpha * m:g}" for m in alpha_curve if m != 1]
    specs += [f"evicpress{NO_KVZIP}", f"evicpress{NO_KVZIP}@{alpha * min(alpha_curve):g}"]
    specs.append("placement-only")
    specs += [*baseline_specs(() if best_codec is None else (best_codec,)), "best-fixed", "ideal"]
    if n_contexts <= EXACT_MAX_CONTEXTS:
        specs.append("exact")
    return specs
