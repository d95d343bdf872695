"""Access frequency: an exponentially decayed rate per context.

Each access adds an exponential kernel ``lam * exp(-lam * (now - t_access))`` with
``lam = ln 2 / half_life_s``; the sum is an unbiased estimate of a steady Poisson rate in
accesses per second, and it forgets at the configured half-life. Only the value at the last
access and that time are kept, so an update is O(1) and reading every rate at once is one
vectorised expression.
"""

from __future__ import annotations

import math
import threading

import numpy as np


class DecayedRate:
    """Decayed access rates (accesses/s) for a growing set of context ids. Thread-safe."""

    def __init__(self, half_life_s: float, capacity: int = 1024) -> None:
        if not half_life_s > 0:
            raise ValueError(f"half_life_s must be > 0; got {half_life_s}")
        self.half_life_s = float(half_life_s)
        self._lam = math.log(2.0) / self.half_life_s  # decay rate, 1/s
        self._slot: dict[str, int] = {}
        self._ids: list[str] = []
        self._value = np.zeros(capacity)  # rate at _at, accesses/s
        self._at = np.zeros(capacity)  # unix seconds of the last update
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, context_id: str) -> bool:
        return context_id in self._slot

    def record(self, context_id: str, now: float, count: float = 1.0) -> float:
        """Count `count` accesses at `now`; returns the rate just after them."""
        with self._lock:
            i = self._slot_of(context_id, now)
            value = self._value[i] * math.exp(-self._lam * max(0.0, now - self._at[i]))
            self._value[i] = value + self._lam * count
            self._at[i] = max(now, self._at[i])
            return float(self._value[i])

    def set(self, context_id: str, rate: float, at: float) -> None:
        """Restore a rate measured at `at` (e.g. from the store after a restart)."""
        with self._lock:
            i = self._slot_of(context_id, at)
            self._value[i], self._at[i] = max(0.0, float(rate)), at

    def rate(self, context_id: str, now: float) -> float:
        """Current rate of one context; 0 for an unknown id."""
        with self._lock:
            i = self._slot.get(context_id)
            if i is None:
                return 0.0
            return float(self._value[i] * math.exp(-self._lam * max(0.0, now - self._at[i])))

    def rates(self, context_ids, now: float) -> np.ndarray:
        """Rates of `context_ids` at `now` as a float64 array (0 for unknown ids)."""
        with self._lock:
            n = len(self._ids)
            current = self._value[:n] * np.exp(-self._lam * np.maximum(0.0, now - self._at[:n]))
            slots = np.fromiter((self._slot.get(c, n) for c in context_ids), dtype=np.int64)
        return np.append(current, 0.0)[slots]

    def forget(self, context_id: str) -> None:
        """Drop an id (its slot is reused by the next new id)."""
        with self._lock:
            i = self._slot.pop(context_id, None)
            if i is None:
                return
            last = len(self._ids) - 1
            if i != last:  # move the last id into the freed slot: keeps the arrays dense
                moved = self._ids[last]
                self._ids[i], self._slot[moved] = moved, i
                self._value[i], self._at[i] = self._value[last], self._at[last]
            self._ids.pop()

    def _slot_of(self, context_id: str, now: float) -> int:
        i = self._slot.get(context_id)
        if i is not None:
            return i
        i = len(self._ids)
        if i == len(self._value):  # amortised O(1) growth
            self._value = np.concatenate([self._value, np.zeros(i)])
            self._at = np.concatenate([self._at, np.zeros(i)])
        self._ids.append(context_id)
        self._slot[context_id] = i
        self._value[i], self._at[i] = 0.0, now
        return i
