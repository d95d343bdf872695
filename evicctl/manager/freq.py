"""Access frequency per context, in accesses per second.

A single exponentially decayed rate with a short half-life (300 s, the manager's old
estimator) lets a context asked every half hour decay to ~0 between its accesses, so the
placer drops it first: the rate then ranks contexts by recency, and placement-only was no
better than LRU (issue 16). Three changes, chosen with the replay's sweeps
(docs/bench-results.md):

1. **Several half-lives** (`ladder` times the configured one: 300 s ... 90,000 s), each a
   decayed count per context, kept at the last access (O(K) per access).
2. **A count prior** (Gamma-Poisson): a context's rate at half-life h is
   ``(c_h + a) / (W_h + a / p_h)``: c_h its decayed count, W_h the decayed exposure (seconds
   watched, ``(1 - exp(-lam t)) / lam``), p_h the population's mean rate, a = PRIOR_COUNT.
   A context seen once keeps a rate near the population's (never 0), a steady one tends
   to its count over its exposure; without accesses it shrinks towards a / W_h, a floor.
3. **The half-life learned from the trace**: before each access is counted, every half-life
   scores the log of the rate it predicted for the context being accessed (a Poisson
   log-likelihood; the compensator, the sum of all predicted rates, is the same total rate
   for every half-life, so it cancels); `rates` reads the half-life with the best score over
   the last ~SCORE_WINDOW accesses. Stationary popularity picks the longest, drift a
   shorter one.
"""

from __future__ import annotations

import math
import threading

import numpy as np

HALF_LIFE_LADDER = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0)  # multiples of the configured half-life
PRIOR_COUNT = 1.0  # a: pseudo-accesses at the population's mean rate
SCORE_WINDOW = 5000  # accesses the half-life choice remembers (its score decays by 1 - 1/window each)
# Named settings for comparisons (`--freq-estimator`): `single` is the old estimator, one
# decayed rate at the configured half-life, no prior (exposure-corrected for the first half-lives).
ESTIMATORS = {"learned": {}, "single": {"ladder": (1.0,), "prior_count": 0.0}}


class RateTable:
    """The estimator over dense integer slots (the replay's context indices, the manager's
    slots). Not thread-safe; DecayedRate adds ids and a lock."""

    def __init__(self, half_life_s: float, capacity: int = 1024, *, ladder=HALF_LIFE_LADDER,
                 prior_count: float = PRIOR_COUNT, score_window: int = SCORE_WINDOW) -> None:
        if not half_life_s > 0:
            raise ValueError(f"half_life_s must be > 0; got {half_life_s}")
        if prior_count < 0 or not ladder:
            raise ValueError("prior_count must be >= 0 and the ladder non-empty")
        self.half_lives_s = np.array([half_life_s * m for m in ladder], dtype=float)  # [K]
        self.lam = math.log(2.0) / self.half_lives_s  # [K] decay rates, 1/s
        self.prior_count = float(prior_count)
        self.keep = 1.0 - 1.0 / max(1, score_window)
        self.count = np.zeros((len(self.lam), capacity))  # [K, n] decayed counts at `at`
        self.at = np.zeros(capacity)  # [n] time of the last update, s
        self.known = np.zeros(capacity, dtype=bool)  # [n]
        self.n_known = 0
        self.start: float | None = None  # when the table began watching, s
        # Per half-life scalars as Python lists: `record` runs once per request (the replay's
        # hot loop), where numpy's per-call overhead on 6 numbers costs 10x the arithmetic.
        self.total = [0.0] * len(self.lam)  # [K] decayed count of every access, at total_at
        self.total_at = 0.0
        self.score = [0.0] * len(self.lam)  # [K] decayed log-likelihood of the accesses seen
        self.scored = 0
        self._lams = self.lam.tolist()

    @property
    def chosen(self) -> int:
        """Index of the half-life whose predictions scored best (the longest before any access)."""
        return max(range(len(self.score)), key=self.score.__getitem__) if self.scored else len(self.lam) - 1

    @property
    def chosen_half_life_s(self) -> float:
        return float(self.half_lives_s[self.chosen])

    def ensure(self, n: int) -> None:
        """Room for slots 0..n-1 (amortised O(1) growth)."""
        if n <= self.count.shape[1]:
            return
        grow = max(n, 2 * self.count.shape[1]) - self.count.shape[1]
        self.count = np.concatenate([self.count, np.zeros((len(self.lam), grow))], axis=1)
        self.at = np.concatenate([self.at, np.zeros(grow)])
        self.known = np.concatenate([self.known, np.zeros(grow, dtype=bool)])

    def record(self, i: int, now: float, count: float = 1.0) -> None:
        """Count `count` accesses of slot i at `now`, after scoring each half-life's prediction
        (scalar code: the formula of `estimates` for one slot; a never-seen slot predicts the prior)."""
        if self.start is None:
            self.start, self.total_at = now, now
        lams, exp = self._lams, math.exp
        known = bool(self.known[i])
        if known:
            dt = max(0.0, now - float(self.at[i]))
            decayed = [c * exp(-lam * dt) for c, lam in zip(self.count[:, i].tolist(), lams, strict=True)]
        else:
            decayed = [0.0] * len(lams)
        dt = now - self.total_at
        totals = [t * exp(-lam * dt) for t, lam in zip(self.total, lams, strict=True)] if dt > 0 else self.total
        if self.n_known and totals[-1] > 0:
            self._score(decayed, totals, now - self.start)
        if not known:
            self.known[i] = True
            self.n_known += 1
        self.count[:, i] = [c + count for c in decayed]
        self.at[i] = max(now, float(self.at[i])) if known else now
        self.total = [t + count for t in totals]
        self.total_at = max(now, self.total_at)

    def _score(self, decayed: list[float], totals: list[float], watched_s: float) -> None:
        """Add log(predicted rate) of the access being recorded to every half-life's score."""
        a, n, keep, score, log = self.prior_count, self.n_known, self.keep, self.score, math.log
        watched_s = max(watched_s, 1e-9)
        for k, lam in enumerate(self._lams):
            exposure = -math.expm1(-lam * watched_s) / lam  # W_h
            if a:  # (c + a) / (W + a / p), p = total / (n W): the population's mean rate
                predicted = (decayed[k] + a) / (exposure + a * n * exposure / max(totals[k], 1e-300))
            else:
                predicted = decayed[k] / exposure
            score[k] = score[k] * keep + log(max(predicted, 1e-300))
        self.scored += 1

    def set_rate(self, i: int, rate: float, at: float) -> None:
        """Restore a rate measured at `at` as a long steady history (after a restart)."""
        self.start = min(self.start if self.start is not None else at, at - 10.0 * float(self.half_lives_s[-1]))
        if not self.known[i]:
            self.known[i] = True
            self.n_known += 1
        old = self.count[:, i] * np.exp(-self.lam * max(0.0, at - float(self.at[i])))
        steady = max(0.0, float(rate)) / self.lam  # the decayed count a steady rate leaves
        self.count[:, i], self.at[i] = steady, at
        self._add_total(at, 0.0)
        self.total = [max(0.0, t + s - o) for t, s, o in zip(self.total, steady.tolist(), old.tolist(), strict=True)]

    def clear(self, i: int) -> None:
        """Forget slot i: it leaves the population (its accesses too)."""
        if self.known[i]:
            self.known[i] = False
            self.n_known -= 1
            now = max(self.total_at, float(self.at[i]))
            self._add_total(now, 0.0)
            gone = (self.count[:, i] * np.exp(-self.lam * (now - float(self.at[i])))).tolist()
            self.total = [max(0.0, t - g) for t, g in zip(self.total, gone, strict=True)]
        self.count[:, i] = 0.0

    def move(self, src: int, dst: int) -> None:
        """Slot src's state into slot dst (DecayedRate keeps its slots dense)."""
        self.count[:, dst], self.at[dst], self.known[dst] = self.count[:, src], self.at[src], self.known[src]
        self.count[:, src], self.known[src] = 0.0, False

    def estimates(self, rows: np.ndarray, now: float) -> np.ndarray:
        """[K, R] every half-life's rate for slots `rows` at `now` (0 for unknown slots)."""
        if self.start is None or self.n_known == 0:
            return np.zeros((len(self.lam), len(rows)))
        lam = self.lam[:, None]
        c = self.count[:, rows] * np.exp(-lam * np.maximum(0.0, now - self.at[rows]))  # [K, R]
        watched_s = max(now - self.start, 1e-9)
        exposure = -np.expm1(-self.lam * watched_s) / self.lam  # [K] W_h
        if self.prior_count == 0:
            est = c / exposure[:, None]
        else:
            total = np.array(self.total) * np.exp(-self.lam * max(0.0, now - self.total_at))
            mean_rate = np.maximum(total / (self.n_known * exposure), 1e-300)  # [K] p_h
            est = (c + self.prior_count) / (exposure + self.prior_count / mean_rate)[:, None]
        return np.where(self.known[rows], est, 0.0)

    def rates(self, rows: np.ndarray, now: float) -> np.ndarray:
        """[R] rates at the learned half-life."""
        return self.estimates(rows, now)[self.chosen]

    def _add_total(self, now: float, count: float) -> None:
        dt = max(0.0, now - self.total_at)
        if dt > 0 or count:
            self.total = [t * math.exp(-lam * dt) + count for t, lam in zip(self.total, self._lams, strict=True)]
        self.total_at = max(now, self.total_at)


class DecayedRate:
    """Access rates (accesses/s) for a growing set of context ids (RateTable's estimator,
    see the module docstring). Thread-safe. `half_life_s` is the shortest half-life."""

    def __init__(self, half_life_s: float, capacity: int = 1024, **table_options) -> None:
        self.table = RateTable(half_life_s, capacity, **table_options)
        self.half_life_s = float(half_life_s)
        self._slot: dict[str, int] = {}
        self._ids: list[str] = []
        self._lock = threading.Lock()

    @property
    def chosen_half_life_s(self) -> float:
        return self.table.chosen_half_life_s

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, context_id: str) -> bool:
        return context_id in self._slot

    def record(self, context_id: str, now: float, count: float = 1.0) -> float:
        """Count `count` accesses at `now`; returns the rate just after them."""
        with self._lock:
            i = self._slot_of(context_id)
            self.table.record(i, now, count)
            return float(self.table.rates(np.array([i]), now)[0])

    def set(self, context_id: str, rate: float, at: float) -> None:
        """Restore a rate measured at `at` (e.g. from the store after a restart)."""
        with self._lock:
            self.table.set_rate(self._slot_of(context_id), rate, at)

    def rate(self, context_id: str, now: float) -> float:
        """Current rate of one context; 0 for an unknown id."""
        with self._lock:
            i = self._slot.get(context_id)
            return 0.0 if i is None else float(self.table.rates(np.array([i]), now)[0])

    def rates(self, context_ids, now: float) -> np.ndarray:
        """Rates of `context_ids` at `now` as a float64 array (0 for unknown ids)."""
        with self._lock:
            n = len(self._ids)
            slots = np.fromiter((self._slot.get(c, n) for c in context_ids), dtype=np.int64)
            current = self.table.rates(np.arange(n), now)
        return np.append(current, 0.0)[slots]

    def forget(self, context_id: str) -> None:
        """Drop an id (its slot is reused by the next new id)."""
        with self._lock:
            i = self._slot.pop(context_id, None)
            if i is None:
                return
            self.table.clear(i)
            last = len(self._ids) - 1
            if i != last:  # move the last id into the freed slot: keeps the slots dense
                moved = self._ids[last]
                self._ids[i], self._slot[moved] = moved, i
                self.table.move(last, i)
            self._ids.pop()

    def _slot_of(self, context_id: str) -> int:
        i = self._slot.get(context_id)
        if i is not None:
            return i
        i = len(self._ids)
        self.table.ensure(i + 1)
        self._ids.append(context_id)
        self._slot[context_id] = i
        return i
