"""The greedy's inner step, vectorised: the cheapest moves per byte freed on one tier.

The sequential greedy (at each step take, over all contexts, the next move with the lowest loss
per byte freed) follows each context's lower convex hull of (bytes freed, loss) points. Every
hull segment of every context is computed at once (vectorised gift wrapping), and the cutoff
slope at which the steps taken cheapest first free enough bytes tells which steps are taken.
"""

from __future__ import annotations

import numpy as np

from evicctl.manager.placer.options import first_equal


def hull_steps(freed: np.ndarray, loss: np.ndarray, freq: np.ndarray, need: int) -> tuple[list[tuple], float]:
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
    n_rows, n = freed.shape
    idx = np.arange(n)  # the contexts still climbing
    x, lo = freed.astype(np.float32), loss  # [K, len(idx)]: their points
    cur_x = cur_l = None  # where they are: None at the origin
    cur_bytes = np.zeros(n, dtype=np.int64)
    steps: list[tuple] = []
    cutoff = _Cutoff(need, n_rows)
    # Two scratch buffers for every pass: fresh 4 MB temporaries cost page faults on each pass.
    scratch = np.empty((2, n_rows * n), dtype=np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        while len(idx):
            dx, slope = scratch[:, : x.size].reshape(2, *x.shape)
            if cur_x is None:
                np.divide(lo, x, out=slope)
                np.multiply(x, np.float32(-np.inf), out=dx)
            else:
                np.subtract(x, cur_x, out=dx)
                np.divide(np.subtract(lo, cur_l, out=slope), dx, out=slope)
                np.multiply(dx, np.float32(-np.inf), out=dx)
            # Points behind (dx < 0) get +inf, the current one (0/0) nan, which fmin skips.
            np.maximum(slope, dx, out=slope)
            best = np.fmin.reduce(slope, axis=0)
            col = first_equal(slope, best)
            pos = np.flatnonzero(best < np.inf)  # the contexts with a point ahead
            if len(pos) == 0:
                break
            context, row = idx[pos], col[pos]
            new_bytes = freed.reshape(-1).take(row * n + context)  # freed[row, context], flat: faster
            step_bytes = new_bytes - cur_bytes[pos]
            utility_slope = best[pos].astype(np.float64) * freq[context]
            steps.append((context, row, step_bytes, utility_slope))
            climbing = np.flatnonzero(utility_slope < cutoff.add(utility_slope, step_bytes))
            pos, row = pos[climbing], row[climbing]
            at = row * x.shape[1] + pos
            cur_x, cur_l, cur_bytes = x.reshape(-1).take(at), lo.reshape(-1).take(at), new_bytes[climbing]
            idx = idx[pos]
            if len(pos) < x.shape[1]:
                x, lo = np.take(x, pos, axis=1), np.take(lo, pos, axis=1)
    return steps, cutoff.value


class _Cutoff:
    """The slope of the last step the greedy would take among the steps added so far (inf
    until they free `need`). Steps costlier than the cutoff can never be taken, so only the
    cheaper ones are kept: each update works on a shrinking set.

    Between exact updates the value may be stale (too high): that only keeps a few more
    contexts climbing. It is refreshed when the cheaper steps added since amount to 1% of
    `need` and the next pass is large enough for the pruning to pay for the refresh (late
    passes move a few hundred contexts while a refresh reads every step kept); `value` is
    exact whenever read.
    """

    def __init__(self, need: int, n_rows: int) -> None:
        self.need, self.total, self._pending, self._n_rows = need, 0, 0, n_rows
        self._value = np.inf
        self._kept = 0
        self.slopes: list[np.ndarray] = []
        self.sizes: list[np.ndarray] = []

    def add(self, slope: np.ndarray, step_bytes: np.ndarray) -> float:
        climbing = len(slope)
        if np.isfinite(self._value):
            cheaper = slope < self._value
            if not cheaper.any():
                return self._value
            slope, step_bytes = slope[cheaper], step_bytes[cheaper]
        self.slopes.append(slope)
        self.sizes.append(step_bytes)
        self._kept += len(slope)
        added = int(step_bytes.sum())
        self.total += added
        self._pending += added
        if self.total >= self.need:
            worth_it = self._n_rows * climbing >= self._kept  # next pass work vs refresh work
            if np.isinf(self._value) or (self._pending > self.need // 100 and worth_it):
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
        self.total, self._pending, self._kept = int(self.sizes[0].sum()), 0, len(self.slopes[0])


def _covering_slope(slope: np.ndarray, weight: np.ndarray, need: int) -> float:
    """The smallest v with sum(weight[slope <= v]) >= need: the slope of the last step a
    greedy taking steps cheapest first needs (inf if all of them are not enough).

    A full sort of a few 100,000 steps costs more than the rest of the tier, so a strided
    sample brackets v, two masked sums confirm the bracket, and only the steps inside it are
    sorted (the whole set if the bracket misses, which a skewed sample can make happen).
    """
    if int(weight.sum()) < need:
        return np.inf
    if len(slope) > 16384:
        stride = len(slope) // 4096
        sample_order = np.argsort(slope[::stride])
        sample_slope = slope[::stride][sample_order]
        cum = np.cumsum(weight[::stride][sample_order]) * stride  # each sample stands for `stride` steps
        at = int(np.searchsorted(cum, need))
        for margin in (128, 512):  # sample positions either side of the estimate
            lo = sample_slope[at - margin] if at - margin >= 0 else -np.inf
            hi = sample_slope[at + margin] if at + margin < len(sample_slope) else np.inf
            below = slope < lo
            inside = (slope <= hi) & ~below
            n_below = int(np.sum(weight, where=below))
            if n_below < need <= n_below + int(np.sum(weight, where=inside)):
                slope, weight, need = slope[inside], weight[inside], need - n_below
                break
    order = np.argsort(slope, kind="stable")
    cum = np.cumsum(weight[order])
    return float(slope[order[int(np.searchsorted(cum, need))]])
