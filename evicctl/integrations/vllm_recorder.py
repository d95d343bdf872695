"""Writes what the vLLM policy does into evicctl's store, off the scheduler's path.

The policy only appends tuples to its `journal` (a deque: ~50 ns, no lock, no I/O). This
thread drains it every `flush_s`, folds it into one row per context, and writes one batch
per tick (Store.flush: one transaction), like the embedded manager does: a manager row with
a heartbeat, a `cpu` tier row, contexts, placements (`cpu` while any chunk is resident,
`dropped` otherwise), one admit/evict event per context and tick whose `bytes` add up every
chunk inserted or evicted, and occupancy samples. It also answers `evicctl pin/evict`.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from evicctl.integrations.vllm_config import VllmPolicyConfig

log = logging.getLogger(__name__)

TIER, BACKEND, CODEC = "cpu", "vllm-cpu-offload", "none"
FREQ_HALF_LIFE_S = 60.0


@dataclass
class ContextMirror:
    """The recorder's view of one context (only this thread touches it)."""

    label: str
    created_at: float
    last_access_at: float
    resident: int = 0  # chunks
    tokens: int = 0  # deepest chunk end seen: the context's length as vLLM chunks it
    hits: int = 0  # requests that reused at least one of its chunks
    misses: int = 0
    pinned: bool = False


class Recorder:
    def __init__(self, policy, config: VllmPolicyConfig) -> None:
        from evicctl import __version__
        from evicctl.control import ControlServer
        from evicctl.integrations.vllm_commands import VllmCommandHandler
        from evicctl.manager.freq import DecayedRate
        from evicctl.store.database import Store

        self.policy, self.config = policy, config
        self.store = Store.open(config.resolved_db_path())
        self.contexts: dict[str, ContextMirror] = {}
        self.freq = DecayedRate(FREQ_HALF_LIFE_S)
        self.inserted = self.evicted = self.hits = 0  # chunks, chunks, requests
        self.misses = 0
        self._dirty: set[str] = set()
        self._events: dict[tuple[str, str, str], int] = {}  # (context, kind, reason) -> chunks
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned = False
        self.control = ControlServer(self.store, __version__, self._config_json())
        self._handler = VllmCommandHandler(self)
        self._restore_pins()
        self.control.heartbeat()

    def start(self) -> Recorder:
        self._thread = threading.Thread(target=self._run, name="evicctl-vllm-recorder", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self.flush_now()
        self.control.stop()
        self.store.close()

    def flush_now(self) -> list[int]:
        """Drain the journal, write the batch, answer commands; returns the new event ids."""
        with self._lock:
            self._drain(time.time())
            ids = self._write(time.time())
            self.control.heartbeat()
            self.control.poll(self._handler)
            return ids

    # ---- the thread ------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.wait(self.config.flush_s):
            try:
                self.flush_now()
            except Exception:  # telemetry must never take the scheduler down: say it once
                if not self._warned:
                    log.exception("evicctl: writing vLLM's cache events to %s failed", self.store.path)
                    self._warned = True

    def _drain(self, now: float) -> None:
        journal = self.policy.journal
        while journal:
            try:
                rec = journal.popleft()
            except IndexError:
                break
            getattr(self, "_on_" + rec[0])(now, *rec[1:])

    # ---- journal records (see EvicctlCachePolicy) --------------------------------------
    def _on_context(self, now: float, ctx: str, label: str) -> None:
        if ctx not in self.contexts:
            self.contexts[ctx] = ContextMirror(label, now, now)
        self._dirty.add(ctx)

    def _on_admit(self, now: float, ctx: str, n: int, end_pos: int) -> None:
        m = self._mirror(ctx, now)
        m.resident += n
        m.tokens = max(m.tokens, end_pos)
        self.inserted += n
        self._count(ctx, "admit", "admit", n)

    def _on_evict(self, now: float, ctx: str, n: int, reason: str) -> None:
        m = self._mirror(ctx, now)
        m.resident -= n
        self.evicted += n
        self._count(ctx, "evict", reason, n)

    def _on_remove(self, now: float, ctx: str, n: int) -> None:
        self._mirror(ctx, now).resident -= n
        self.inserted -= n  # a failed store: it never held data
        self._count(ctx, "lost", "store-failed", n)

    def _on_access(self, now: float, ctx: str, reused: int, observed: int) -> None:
        m = self._mirror(ctx, now)
        m.last_access_at = now
        if reused:
            m.hits += 1
            self.hits += 1
        else:
            m.misses += 1
            self.misses += 1
        self.freq.record(ctx, now)

    def _on_clear(self, now: float) -> None:
        for ctx, m in self.contexts.items():
            if m.resident:
                self._count(ctx, "evict", "reset", m.resident)
                self.evicted += m.resident
                m.resident = 0
                self._dirty.add(ctx)

    def _mirror(self, ctx: str, now: float) -> ContextMirror:
        m = self.contexts.get(ctx)
        if m is None:
            m = self.contexts[ctx] = ContextMirror(ctx, now, now)
        self._dirty.add(ctx)
        return m

    def _count(self, ctx: str, kind: str, reason: str, n: int) -> None:
        key = (ctx, kind, reason)
        self._events[key] = self._events.get(key, 0) + n

    # ---- writes ------------------------------------------------------------------------
    def _write(self, now: float) -> list[int]:
        batch = self.store.batch()
        chunk_bytes = self.config.chunk_bytes
        for ctx in self._dirty:
            m = self.contexts[ctx]
            batch.upsert("contexts", {
                "id": ctx, "label": m.label, "tenant": self.config.tenant, "tokens": m.tokens,
                "raw_bytes": m.tokens * self.config.kv_bytes_per_token, "created_at": m.created_at,
                "last_access_at": m.last_access_at, "hits": m.hits, "misses": m.misses,
                "freq": self.freq.rate(ctx, now), "pin_tier": TIER if m.pinned else None,
            })  # fmt: skip
            batch.upsert("placements", {
                "context_id": ctx, "tier": TIER if m.resident > 0 else "dropped", "codec": CODEC,
                "stored_bytes": m.resident * chunk_bytes, "since": now,
            })  # fmt: skip
        self._dirty = set()
        for (ctx, kind, reason), n in self._events.items():
            to_tier = TIER if kind == "admit" else "dropped"
            from_tier = None if kind == "admit" else TIER
            batch.event(ts=now, context_id=ctx, kind=kind, from_tier=from_tier, to_tier=to_tier,
                        from_codec=CODEC, to_codec=CODEC, bytes=n * chunk_bytes, reason=f"{reason}: {n} chunk(s)")  # fmt: skip
        self._events = {}
        used = sum(m.resident for m in self.contexts.values()) * chunk_bytes
        capacity = self.policy.cache_capacity * chunk_bytes
        batch.upsert("tiers", {"name": TIER, "backend": BACKEND, "rank": 0, "capacity_bytes": capacity,
                               "used_bytes": used, "hits": self.hits, "updated_at": now})  # fmt: skip
        batch.sample(ts=now, tier=TIER, used_bytes=used, capacity_bytes=capacity, hits=self.hits, misses=self.misses)
        return self.store.flush(batch)

    def set_pin(self, command, pinned: bool) -> list[int]:
        """Pin or unpin (called by the command handler, on this thread, under _lock)."""
        ctx = command.context_id
        self.contexts[ctx].pinned = pinned
        self.policy.submit("pin" if pinned else "unpin", ctx)
        self._dirty.add(ctx)
        batch = self.store.batch()
        batch.event(context_id=ctx, kind="pin" if pinned else "unpin", to_tier=TIER if pinned else None,
                    reason="operator", actor=command.actor, command_id=command.id)  # fmt: skip
        self._write_into(batch)
        return self.store.flush(batch)

    def _write_into(self, batch) -> None:
        for ctx in self._dirty:
            m = self.contexts[ctx]
            batch.upsert("contexts", {"id": ctx, "pin_tier": TIER if m.pinned else None})

    def _restore_pins(self) -> None:
        """Pins survive restarts (DESIGN §2.4): contexts pinned in the store stay pinned."""
        for row in self.store.query("SELECT id, label, created_at, last_access_at FROM contexts WHERE pin_tier = ?", (TIER,)):
            self.contexts[row["id"]] = ContextMirror(row["label"] or row["id"], row["created_at"], row["last_access_at"], pinned=True)
            self.policy.submit("pin", row["id"])

    def _config_json(self) -> dict:
        c = self.config
        return {"integration": "vllm", "policy": "EvicctlCachePolicy", "chunk_tokens": c.chunk_tokens,
                "kv_bytes_per_token": c.kv_bytes_per_token, "cache_chunks": self.policy.cache_capacity,
                "half_life_requests": c.half_life_requests, "costs": str(c.costs_path),
                "heartbeat_timeout_s": max(5.0, 4 * c.flush_s)}  # fmt: skip
