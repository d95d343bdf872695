"""What the Manager shares with the modules that act for it, as one explicit object.

MoveExecutor (moves.py), recover (restart.py) and CommandHandler (commands.py) read and change
the manager's in-memory state; they get this object instead of the Manager's private
attributes, so what they may touch is written down here.

Locking: `lock` guards `contexts`, `dirty`, `batch` and the counters, and is never held during
tier I/O; `exec_lock` lets one thread at a time plan and move data.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from evicctl.manager.freq import DecayedRate
from evicctl.manager.metrics import NULL, Recorder
from evicctl.manager.state import ContextState

# after a write to a tier failed (disk full, read-only), how long copies to it are not tried
WRITE_BACKOFF_S = 10.0


@dataclass(eq=False)
class Runtime:
    store: Any  # evicctl.store.database.Store, opened by the manager
    tier_by_name: dict[str, Any]  # name -> Tier, fastest first
    freq: DecayedRate
    contexts: dict[str, ContextState] = field(default_factory=dict)
    dirty: set[str] = field(default_factory=set)  # contexts whose row must be rewritten
    tier_hits: dict[str, int] = field(default_factory=dict)
    misses: int = 0
    kv_shape: dict | None = None  # layers, kv_heads, head_dim, dtype_bytes, window_numel
    replan_needed: bool = True
    lock: threading.RLock = field(default_factory=threading.RLock)
    exec_lock: threading.RLock = field(default_factory=threading.RLock)
    # Test hook: called with a stage name between the steps of a move ("copied", "switched",
    # "admit-copied"); a test raises from it to simulate a crash there.
    fault: Callable[[str], None] | None = None
    batch: Any = None  # the store's open write batch; replaced by flush()
    # tier -> (monotonic time until which copies to it are not tried, why): see block_writes
    write_blocked_until: dict[str, tuple[float, str]] = field(default_factory=dict)
    # Prometheus hooks (metrics.py): a no-op recorder unless the manager serves /metrics
    metrics: Recorder = field(default_factory=lambda: NULL)
    # tier -> stored bytes of the contexts placed there, as the placer counts them (each
    # context's copy, not the tier's transient double copies of a move): what an admission
    # checks for free room without summing every context. Every placement change goes
    # through moves.MoveExecutor, which keeps it with `placed`; counted once at start.
    placed_bytes: dict[str, int] = field(default_factory=dict)
    placed_changes: int = 0  # moves by `placed`: readers of the tiers' occupancy ask again after one

    def __post_init__(self) -> None:
        if self.batch is None:
            self.batch = self.store.batch()

    def flush(self) -> list[int]:
        """Write the batch collected so far in one transaction; returns the new event ids."""
        with self.lock:
            batch, self.batch = self.batch, self.store.batch()
        if len(batch) == 0:
            return []
        try:
            return self.store.flush(batch)
        except Exception:
            # One transaction: nothing of it was written. Put it back in front of what came
            # since, so the next flush retries it; dropped, a stored context's row would be
            # missing and the next start would delete its file as an orphan.
            with self.lock:
                self.batch = batch.followed_by(self.batch)
            raise

    def placed(self, ctx: ContextState, sign: int) -> None:
        """Count (sign 1) or uncount (sign -1) a context's copy in placed_bytes. Under `lock`."""
        if ctx.stored:
            self.placed_bytes[ctx.tier] = self.placed_bytes.get(ctx.tier, 0) + sign * ctx.stored_bytes
            self.placed_changes += 1

    def recount_placed(self) -> None:
        """placed_bytes counted from every context (O(N): at start, and by tests to check it)."""
        with self.lock:
            counts = dict.fromkeys(self.tier_by_name, 0)
            for ctx in self.contexts.values():
                if ctx.stored:
                    counts[ctx.tier] = counts.get(ctx.tier, 0) + ctx.stored_bytes
            self.placed_bytes = counts

    def block_writes(self, tier: str, why: str, seconds: float = WRITE_BACKOFF_S) -> None:
        """No copies to `tier` for `seconds` (a write there just failed: disk full, read-only)."""
        with self.lock:
            self.write_blocked_until[tier] = (time.monotonic() + seconds, why)

    def write_blocked(self, tier: str) -> bool:
        with self.lock:
            until = self.write_blocked_until.get(tier)
            if until is None or time.monotonic() >= until[0]:
                self.write_blocked_until.pop(tier, None)
                return False
            return True

    def at_fault_point(self, stage: str) -> None:
        if self.fault is not None:
            self.fault(stage)
