"""The Manager an engine embeds: store / lookup a context's KV; a control thread places them.

Threads: the engine calls store/lookup/record_profile/report_prefill from its own threads;
`start()` runs a control thread that every tick heartbeats, applies operator commands,
re-plans (on tier pressure, new profiles, and every `replan_s`) and writes state to the store.
`_lock` guards the in-memory placement state and is never held during tier I/O; `_exec_lock`
lets one thread at a time plan and move data.

A move is executed copy first, then the placement row is switched (one transaction with its
event), then the old copy is deleted: a crash at any point leaves one valid copy that the
store points at (plus, at worst, an orphan file that the next start deletes).

Restart: with the same database and cache directory, disk-tier copies are adopted (their
checksums verified), memory-tier ones are reported gone, pins come back from the store, and
files no placement points at are deleted.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from evicctl import __version__
from evicctl.config import ManagerConfig
from evicctl.errors import CorruptDataError, NoSuchContextError, UnknownNameError, UsageError
from evicctl.manager.freq import DecayedRate
from evicctl.manager.kv import KV, raw_kv_bytes
from evicctl.manager.placer import DROPPED_TIER, PlacementProblem, Plan, place
from evicctl.manager.utility import codec_sizes, price_problem

log = logging.getLogger(__name__)

DEFAULT_QUERY_TOKENS = 32  # before the engine reports a hit's prefill
QUERY_EWMA = 0.1
HEARTBEAT_EVERY_S = 0.5  # the CLI calls a manager dead after heartbeat_timeout_s (5 s)
SAMPLE_EVERY_S = 1.0  # tier occupancy samples for the dashboard's history
FREQ_REFRESH_S = 10.0  # every context's row gets its decayed freq rewritten this often
PREFERRED_METRIC = "teacher-forced"  # the metric the placer trusts when several are recorded
EVENT_KIND = {"admit": "admit", "compress": "compress", "demote": "evict", "promote": "move", "move": "move", "drop": "drop"}


@dataclass(frozen=True)
class Placement:
    """Where a context is: a tier and codec, or tier "dropped" (recomputed on next use)."""

    context_id: str
    tier: str
    codec: str
    stored_bytes: int
    checksum: str | None = None
    location: str | None = None
    since: float = 0.0


@dataclass(frozen=True)
class Lookup:
    """A hit: the KV on the compute device and what it cost to get it there."""

    kv: KV
    tier: str
    codec: str
    stored_bytes: int
    load_s: float  # reading the stored form from its tier
    decode_s: float  # decoding (and copying) it to the compute device
    freq: float = 0.0  # the context's access rate after this lookup, 1/s


@dataclass
class ContextState:
    """One known context (mutable; guarded by Manager._lock)."""

    id: str
    tokens: int
    raw_bytes: int
    tenant: str = "default"
    label: str | None = None
    created_at: float = 0.0
    last_access_at: float = 0.0
    hits: int = 0
    misses: int = 0
    shape: tuple[int, int, int, int, int] | None = None  # layers, kv_heads, head_dim, dtype_bytes, window_numel
    tier: str = DROPPED_TIER
    codec: str = "none"
    key: str | None = None  # the id its copy has in its tier
    stored_bytes: int = 0
    checksum: str | None = None
    location: str | None = None
    since: float = 0.0
    pin_tier: str | None = None
    pin_codec: str | None = None
    quality_floor: float | None = None
    min_tier: int = 0  # after an operator evict: tiers above stay excluded until the next hit
    profiles: dict[str, tuple[float, float | None, str]] = field(default_factory=dict)  # codec -> (q, sd, metric)
    miss_s: float | None = None  # measured prefill of the whole context
    utility: float | None = None
    sizes: dict[str, int] = field(default_factory=dict)

    @property
    def stored(self) -> bool:
        return self.tier != DROPPED_TIER

    def placement(self) -> Placement:
        return Placement(self.id, self.tier, self.codec, self.stored_bytes, self.checksum, self.location, self.since)

    def row(self, freq: float) -> dict:
        return {
            "id": self.id, "label": self.label, "tenant": self.tenant, "tokens": self.tokens,
            "raw_bytes": self.raw_bytes, "created_at": self.created_at, "last_access_at": self.last_access_at,
            "hits": self.hits, "misses": self.misses, "freq": freq, "utility": self.utility,
            "pin_tier": self.pin_tier, "pin_codec": self.pin_codec, "quality_floor": self.quality_floor,
        }  # fmt: skip

    def placement_row(self) -> dict:
        return {
            "context_id": self.id, "tier": self.tier, "codec": self.codec, "stored_bytes": self.stored_bytes,
            "checksum": self.checksum, "location": self.location, "since": self.since,
        }  # fmt: skip


def tier_key(context_id: str, codec: str) -> str:
    """The id a copy has inside its tier: one per codec, so a recompress on the same tier
    writes a new copy beside the old one instead of over it (copy first, then switch)."""
    return f"{context_id}.{codec.replace('@', '-').replace('+', '_')}"


class Manager:
    """The engine's API (see the module docstring). Use as a context manager or call close()."""

    def __init__(self, config: ManagerConfig | None = None, *, probe: bool = True, tiers=None) -> None:
        from evicctl.control import ControlServer
        from evicctl.manager.codecs import validate_codec_name
        from evicctl.manager.commands import CommandHandler
        from evicctl.manager.costs import CostModel
        from evicctl.manager.tiers import make_tier
        from evicctl.store import Store

        self.config = config = config or ManagerConfig()
        self.codec_names = tuple(validate_codec_name(c) for c in config.codecs)
        if "none" not in self.codec_names:
            self.codec_names = ("none", *self.codec_names)  # a fresh context can always be kept whole
        self._lock = threading.RLock()
        self._exec_lock = threading.RLock()
        self._contexts: dict[str, ContextState] = {}
        self._freq = DecayedRate(config.freq_half_life_s)
        self._tenant_floors = dict(config.tenant_quality_floors)
        self._query_tokens = float(DEFAULT_QUERY_TOKENS)
        self._kv_shape: dict | None = None
        self._tier_hits: dict[str, int] = {}
        self._misses = 0
        self._dirty: set[str] = set()
        self._replan_needed = True
        self._last_replan = self._last_heartbeat = self._last_sample = self._last_refresh = 0.0
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._closed = False
        # Test hook: called with a stage name between the steps of a move ("copied", "switched",
        # "admit-copied"); a test raises from it to simulate a crash there.
        self.fault: Callable[[str], None] | None = None

        self.tiers = list(tiers) if tiers is not None else [
            make_tier(cfg, rank, cache_dir=config.cache_dir) for rank, cfg in enumerate(config.tiers)
        ]
        self._tier_by_name = {t.name: t for t in self.tiers}
        if probe:
            for tier in self.tiers:
                tier.probe()
        self._store = Store.open(config.db_path, samples_retention_s=config.samples_retention_s)
        self._batch = self._store.batch()
        previous = self._store.query("SELECT heartbeat_at, config_json FROM manager WHERE id = 1")
        prev_config = json.loads(previous[0]["config_json"] or "{}") if previous else {}
        self.cost_model = CostModel.from_dict(prev_config["cost_model"]) if prev_config.get("cost_model") else CostModel()
        self._query_tokens = float(prev_config.get("query_tokens", DEFAULT_QUERY_TOKENS))
        self._kv_shape = prev_config.get("kv_shape")
        self._control = ControlServer(self._store, __version__, self.config_json())
        self._commands = CommandHandler(self)
        self._recover(previous[0]["heartbeat_at"] if previous else time.time())
        self._control.heartbeat(self.config_json())
        self._last_heartbeat = time.time()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Manager:
        """Start the control thread (commands, re-planning, state writes)."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="evicctl-manager", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        with self._exec_lock:
            self._write_state(time.time(), force=True)
            self._flush()
            self._control.heartbeat(self.config_json())  # the latest cost model and KV shape
            self._control.stop()
            self._store.close()
        for tier in self.tiers:
            close = getattr(tier, "close", None)
            if close is not None:
                close()  # helper threads, connections; the data stays

    def __enter__(self) -> Manager:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.tick()
            except Exception:  # the loop must outlive a bad tick; the next one retries
                log.exception("manager tick failed")
            self._wake.wait(max(0.0, self.config.tick_s - (time.monotonic() - started)))
            self._wake.clear()

    # ------------------------------------------------------------------ the engine's API

    def store(self, context_id: str, kv: KV, *, label: str | None = None, tenant: str = "default",
              prefill_s: float | None = None) -> Placement:  # fmt: skip
        """Keep a context's (full) KV: admitted at its best option the tiers have room for."""
        if not isinstance(context_id, str) or not context_id:
            raise UsageError("context_id must be a non-empty string")
        now = time.time()
        with self._exec_lock:
            with self._lock:
                ctx = self._contexts.get(context_id)
                if ctx is not None and ctx.stored:  # already kept: nothing new to store
                    self._freq.record(context_id, now)
                    ctx.last_access_at = now
                    self._dirty.add(context_id)
                    return ctx.placement()
                ctx = self._admit_state(ctx, context_id, kv, label, tenant, prefill_s, now)
            plan = self._plan(admit=context_id)
            self._apply_admission(ctx, kv, plan, now)
            pressure = self._over_capacity()
        if pressure:
            self._replan_needed = True
            if self.running:
                self._wake.set()
            else:
                self.tick()
        with self._lock:
            return ctx.placement()

    def lookup(self, context_id: str, device=None) -> Lookup | None:
        """The context's KV on `device` (default config.device), or None on a miss."""
        from evicctl.manager.codecs import get_codec

        now = time.time()
        for _attempt in range(3):  # a concurrent move may delete the copy we were about to read
            with self._lock:
                ctx = self._contexts.get(context_id)
                if ctx is None:
                    return None
                if not ctx.stored:
                    self._count_miss(ctx, now)
                    return None
                tier, key, codec, nbytes = self._tier_by_name[ctx.tier], ctx.key, ctx.codec, ctx.stored_bytes
            try:
                stored, load_s = tier.get(key)
            except KeyError:
                continue
            except CorruptDataError as exc:
                self._lose(context_id, key, str(exc))
                with self._lock:
                    self._count_miss(ctx, now)
                return None
            start = time.perf_counter()
            try:
                kv = get_codec(codec).decode(stored, device or self.config.device)
            except CorruptDataError as exc:
                self._lose(context_id, key, str(exc))
                with self._lock:
                    self._count_miss(ctx, now)
                return None
            decode_s = time.perf_counter() - start
            self.cost_model.observe_decode(get_codec(codec).family, nbytes, decode_s)
            with self._lock:
                freq = self._freq.record(context_id, now)
                ctx.hits += 1
                ctx.last_access_at = now
                ctx.min_tier = 0  # used again: an operator's evict no longer holds it down
                self._tier_hits[tier.name] = self._tier_hits.get(tier.name, 0) + 1
                self._dirty.add(context_id)
            return Lookup(kv, tier.name, codec, nbytes, load_s, decode_s, freq)
        return None

    def record_profile(self, context_id: str, codec: str, quality: float, quality_sd: float | None,
                       n_queries: int, metric: str = PREFERRED_METRIC, raw_mean: float | None = None,
                       f1: float | None = None) -> None:  # fmt: skip
        """Store a codec's measured quality for a context; the placer uses it from the next plan."""
        from evicctl.manager.codecs import validate_codec_name

        codec = validate_codec_name(codec)
        if not 0.0 <= quality <= 1.0:
            raise UsageError(f"quality must be in [0, 1]; got {quality}")
        with self._lock:
            ctx = self._contexts.get(context_id)
            if ctx is None:
                raise NoSuchContextError(context_id)
            have = ctx.profiles.get(codec)
            if have is None or metric == PREFERRED_METRIC or have[2] != PREFERRED_METRIC:
                ctx.profiles[codec] = (float(quality), None if quality_sd is None else float(quality_sd), metric)
            self._batch.upsert("profiles", {
                "context_id": context_id, "codec": codec, "metric": metric, "quality": float(quality),
                "quality_sd": quality_sd, "raw_mean": raw_mean, "f1": f1, "n_queries": int(n_queries),
                "measured_at": time.time(),
            })  # fmt: skip
            self._replan_needed = True
        if not self.running:
            self._flush()

    def report_prefill(self, new_tokens: int, cached_tokens: int, seconds: float) -> None:
        """A prefill the engine timed: refines the cost model (and, for hits, the query size)."""
        self.cost_model.observe_prefill(new_tokens, cached_tokens, seconds)
        if cached_tokens > 0 and new_tokens > 0:
            self._query_tokens += QUERY_EWMA * (new_tokens - self._query_tokens)

    def known(self, context_id: str) -> bool:
        with self._lock:
            return context_id in self._contexts

    def placement(self, context_id: str) -> Placement | None:
        with self._lock:
            ctx = self._contexts.get(context_id)
            return None if ctx is None else ctx.placement()

    def context_ids(self) -> list[str]:
        with self._lock:
            return list(self._contexts)

    def config_json(self) -> dict:
        """What readers (snapshot, CLI) need to price options as the placer does."""
        return {
            "alpha": self.config.alpha,
            "codecs": list(self.codec_names),
            "cost_model": self.cost_model.to_dict(),
            "query_tokens": round(self._query_tokens, 2),
            "kv_shape": self._kv_shape,
            "heartbeat_timeout_s": self.config.heartbeat_timeout_s,
            "tick_s": self.config.tick_s,
            "replan_s": self.config.replan_s,
            "quality_floor": self.config.quality_floor,
            "tenant_quality_floors": self._tenant_floors,
            "tiers": [{"name": t.name, "backend": t.backend, "rank": t.rank, "capacity_bytes": t.capacity_bytes}
                      for t in self.tiers],  # fmt: skip
            "device": self.config.device,
        }

    # ------------------------------------------------------------------ the control loop

    def tick(self) -> None:
        """One control step: heartbeat, operator commands, re-plan if due, write state."""
        now = time.time()
        with self._exec_lock:
            if self._closed and self._thread is None:
                return
            if now - self._last_heartbeat >= HEARTBEAT_EVERY_S:
                self._control.heartbeat(self.config_json())
                self._last_heartbeat = now
            self._control.poll(self._commands)
            timer = now - self._last_replan >= self.config.replan_s
            if timer or self._replan_needed or self._over_capacity():
                self._replan_needed = False
                self._last_replan = now
                self.execute(self._plan(rebalance=timer))
            self._write_state(now)
            self._flush()

    def _over_capacity(self) -> bool:
        return any(t.used_bytes > t.capacity_bytes for t in self.tiers)

    # ------------------------------------------------------------------ planning

    def _plan(self, *, admit: str | None = None, rebalance: bool = False,
              overrides: dict[str, dict] | None = None) -> Plan:  # fmt: skip
        """Place every stored context (and `admit`, held whole by the caller)."""
        return place(self.problem(admit=admit, rebalance=rebalance, overrides=overrides))

    def problem(self, *, admit: str | None = None, rebalance: bool = False,
                overrides: dict[str, dict] | None = None) -> PlacementProblem:  # fmt: skip
        """The placer's input from the current state. overrides: context id -> any of
        pin_tier, pin_codec, force_tier, force_codec, min_tier (by name), for plans the
        operator asks about before they take effect."""
        now = time.time()
        with self._lock:
            states = [ctx for cid, ctx in self._contexts.items() if ctx.stored or cid == admit]
            in_use = {ctx.codec for ctx in states if ctx.stored} - set(self.codec_names)
            return price_problem(
                states,
                self._freq.rates([ctx.id for ctx in states], now),
                codecs=self.codec_names + tuple(sorted(in_use)),  # a copy at a codec no longer offered
                tiers=self.tiers,
                cost_model=self.cost_model,
                alpha=self.config.alpha,
                query_tokens=self._query_tokens,
                floor_of=self.quality_floor_of,
                admit=admit,
                rebalance=rebalance,
                overrides=overrides,
            )

    # ------------------------------------------------------------------ executing plans

    def execute(self, plan: Plan, *, actor: str = "policy", command_id: int | None = None) -> list[int]:
        """Carry out a plan's moves (copy, switch rows, delete old copies); returns event ids."""
        with self._exec_lock:
            copies = []
            for move in plan:
                if move.kind == "admit":
                    continue  # admissions carry their KV: store() does them
                copy = self._copy(move)
                if copy is not None:
                    copies.append((move, copy))
            if self.fault:
                self.fault("copied")
            old_copies = []
            with self._lock:
                for move, copy in copies:
                    old = self._switch(move, copy, actor, command_id)
                    if old is not None:
                        old_copies.append(old)
            event_ids = self._flush()
            if self.fault:
                self.fault("switched")
            for tier, key in old_copies:
                tier.delete(key)
            return event_ids

    def _copy(self, move):
        """Step 1 of a move: the new copy, written beside the old one. None if the source is
        unreadable (the context is then lost: an event, a miss next time)."""
        from evicctl.manager.codecs import get_codec

        with self._lock:
            ctx = self._contexts.get(move.context_id)
            if ctx is None or not ctx.stored or ctx.tier != move.from_tier or ctx.codec != move.from_codec:
                return None  # changed since it was planned; the next plan sees the new state
            src, key = self._tier_by_name[ctx.tier], ctx.key
        if move.to_codec is None:
            return ("drop", None, None, 0)
        try:
            stored, _ = src.get(key)
            if move.to_codec != move.from_codec:
                stored = get_codec(move.to_codec).encode(get_codec(move.from_codec).decode(stored, "cpu"))
            new_key = tier_key(move.context_id, move.to_codec)
            put = self._tier_by_name[move.to_tier].put(new_key, stored)
        except KeyError:
            return None
        except CorruptDataError as exc:
            self._lose(move.context_id, key, str(exc))
            return None
        return (new_key, put.location, put.checksum, stored.nbytes)

    def _switch(self, move, copy, actor: str, command_id: int | None):
        """Step 2 (under _lock): point the context at its new copy; batch the row and event.
        Returns the old copy (tier, key) to delete once the batch is written."""
        ctx = self._contexts[move.context_id]
        old = (self._tier_by_name[ctx.tier], ctx.key) if ctx.stored else None
        new_key, location, checksum, nbytes = copy
        now = time.time()
        if move.to_codec is None:
            ctx.tier, ctx.key, ctx.stored_bytes, ctx.location, ctx.checksum = DROPPED_TIER, None, 0, None, None
        else:
            ctx.tier, ctx.codec, ctx.key, ctx.stored_bytes = move.to_tier, move.to_codec, new_key, nbytes
            ctx.location, ctx.checksum = location, checksum
        ctx.since = now
        ctx.utility = move.utility_after
        self._batch.upsert("placements", ctx.placement_row())
        self._batch.upsert("contexts", {"id": ctx.id, "utility": ctx.utility})
        self._batch.event(
            ts=now, context_id=ctx.id, kind=EVENT_KIND.get(move.kind, "move"), from_tier=move.from_tier,
            to_tier=move.to_tier, from_codec=move.from_codec, to_codec=move.to_codec, bytes=nbytes,
            utility_before=move.utility_before, utility_after=move.utility_after, reason=move.reason,
            actor=actor, command_id=command_id,
        )  # fmt: skip
        return old

    def _admit_state(self, ctx, context_id, kv: KV, label, tenant, prefill_s, now) -> ContextState:
        """Create (or refresh a dropped) context's state for admission. Under _lock."""
        wq = kv.window_queries
        shape = (kv.layers, kv.kv_heads, kv.head_dim, kv.keys[0].element_size(), 0 if wq is None else wq.numel())
        self._kv_shape = dict(zip(("layers", "kv_heads", "head_dim", "dtype_bytes", "window_numel"), shape, strict=True))
        if ctx is None:
            ctx = ContextState(context_id, kv.tokens, raw_kv_bytes(kv.tokens, *shape[:4]), created_at=now)
            self._contexts[context_id] = ctx
        ctx.tokens, ctx.raw_bytes, ctx.shape = kv.tokens, raw_kv_bytes(kv.tokens, *shape[:4]), shape
        ctx.label = label if label is not None else ctx.label
        ctx.tenant = tenant
        ctx.last_access_at = now
        ctx.sizes = codec_sizes(self.codec_names, kv.tokens, shape, ctx.raw_bytes)
        if prefill_s is not None and prefill_s > 0:
            ctx.miss_s = float(prefill_s)
        self._freq.record(context_id, now)
        return ctx

    def _apply_admission(self, ctx: ContextState, kv: KV, plan: Plan, now: float) -> None:
        from evicctl.manager.codecs import get_codec

        move = next(m for m in plan if m.context_id == ctx.id)
        if move.to_codec is None:
            new = ("drop", None, None, 0)
        else:
            stored = get_codec(move.to_codec).encode(kv)
            key = tier_key(ctx.id, move.to_codec)
            put = self._tier_by_name[move.to_tier].put(key, stored)
            new = (key, put.location, put.checksum, stored.nbytes)
        if self.fault:
            self.fault("admit-copied")
        with self._lock:
            self._batch.upsert("contexts", ctx.row(self._freq.rate(ctx.id, now)))
            self._switch(move, new, "policy", None)
        self._flush()

    # ------------------------------------------------------------------ losses and misses

    def _count_miss(self, ctx: ContextState, now: float) -> None:
        """Under _lock."""
        self._freq.record(ctx.id, now)  # a miss is a use: the context is worth keeping
        ctx.misses += 1
        ctx.last_access_at = now
        self._misses += 1
        self._dirty.add(ctx.id)

    def _lose(self, context_id: str, key: str | None, why: str, *, reason: str = "lost") -> None:
        """A copy failed its checksum or vanished: never served; the context becomes dropped."""
        with self._lock:
            ctx = self._contexts.get(context_id)
            if ctx is None or ctx.key != key or not ctx.stored:
                return
            tier = self._tier_by_name.get(ctx.tier)
            self._batch.event(
                context_id=context_id, kind="lost", from_tier=ctx.tier, to_tier=DROPPED_TIER,
                from_codec=ctx.codec, bytes=ctx.stored_bytes, reason=reason, utility_before=ctx.utility,
            )  # fmt: skip
            log.warning("context %s lost: %s", context_id, why)
            ctx.tier, ctx.key, ctx.stored_bytes, ctx.location, ctx.checksum = DROPPED_TIER, None, 0, None, None
            ctx.since = time.time()
            self._batch.upsert("placements", ctx.placement_row())
        if tier is not None and key is not None:
            tier.delete(key)
        if not self.running:
            self._flush()

    # ------------------------------------------------------------------ state writes

    def _write_state(self, now: float, *, force: bool = False) -> None:
        """Batch the dirty contexts, every tier and (each SAMPLE_EVERY_S) occupancy samples."""
        with self._lock:
            dirty, self._dirty = self._dirty, set()
            if force or now - self._last_refresh >= FREQ_REFRESH_S:
                self._last_refresh = now
                dirty |= set(self._contexts)  # freq decays for everyone: refresh all rows now and then
            rates = self._freq.rates(list(dirty), now)
            for cid, rate in zip(dirty, rates, strict=True):
                ctx = self._contexts.get(cid)
                if ctx is not None:
                    self._batch.upsert("contexts", ctx.row(float(rate)))
            for tier in self.tiers:
                self._batch.upsert("tiers", {
                    "name": tier.name, "backend": tier.backend, "rank": tier.rank,
                    "capacity_bytes": tier.capacity_bytes, "used_bytes": tier.used_bytes,
                    "read_bps": tier.read_bps, "write_bps": tier.write_bps,
                    "hits": self._tier_hits.get(tier.name, 0), "updated_at": now,
                })  # fmt: skip
            if force or now - self._last_sample >= SAMPLE_EVERY_S:
                self._last_sample = now
                for tier in self.tiers:
                    self._batch.sample(
                        ts=now, tier=tier.name, used_bytes=tier.used_bytes, capacity_bytes=tier.capacity_bytes,
                        hits=self._tier_hits.get(tier.name, 0), misses=self._misses,
                    )  # fmt: skip

    def _flush(self) -> list[int]:
        with self._lock:
            batch, self._batch = self._batch, self._store.batch()
        if len(batch) == 0:
            return []
        return self._store.flush(batch)

    # ------------------------------------------------------------------ restart

    def _recover(self, previous_heartbeat_at: float) -> None:
        """Rebuild the state a previous manager left in the store (see the module docstring)."""
        now = time.time()
        rows = {r["id"]: r for r in self._store.query("SELECT * FROM contexts")}
        self._tier_hits = {r["name"]: r["hits"] for r in self._store.query("SELECT name, hits FROM tiers")}
        self._misses = sum(r["misses"] for r in rows.values())
        placements = {r["context_id"]: r for r in self._store.query("SELECT * FROM placements")}
        shape = self._kv_shape
        shape_tuple = None if not shape else tuple(shape.get(k, 0) for k in
                                                   ("layers", "kv_heads", "head_dim", "dtype_bytes", "window_numel"))  # fmt: skip
        for cid, r in rows.items():
            ctx = ContextState(
                cid, r["tokens"], r["raw_bytes"], tenant=r["tenant"], label=r["label"], created_at=r["created_at"],
                last_access_at=r["last_access_at"], hits=r["hits"], misses=r["misses"], shape=shape_tuple,
                pin_tier=r["pin_tier"], pin_codec=r["pin_codec"], quality_floor=r["quality_floor"],
                utility=r["utility"],
            )  # fmt: skip
            ctx.sizes = codec_sizes(self.codec_names, ctx.tokens, shape_tuple, ctx.raw_bytes)
            self._contexts[cid] = ctx
            # freq was written as the decayed rate at (about) the last heartbeat
            self._freq.set(cid, r["freq"], min(previous_heartbeat_at, now))
        for r in self._store.query("SELECT * FROM profiles ORDER BY measured_at"):
            ctx = self._contexts.get(r["context_id"])
            have = ctx.profiles.get(r["codec"]) if ctx else None
            if ctx is not None and (have is None or r["metric"] == PREFERRED_METRIC or have[2] != PREFERRED_METRIC):
                ctx.profiles[r["codec"]] = (r["quality"], r["quality_sd"], r["metric"])
        adopted: set[str] = set()
        for cid, ctx in self._contexts.items():
            location = self._adopt(ctx, placements.get(cid), now)
            if location:
                adopted.add(location)
            self._dirty.add(cid)
        self._delete_orphans(adopted)
        self._flush()

    def _adopt(self, ctx: ContextState, row, now: float) -> str | None:
        """Re-attach a context's copy from its placement row; returns its location if adopted."""
        if row is None or row["tier"] == DROPPED_TIER:
            ctx.since = row["since"] if row else now
            self._batch.upsert("placements", ctx.placement_row())
            return None
        tier = self._tier_by_name.get(row["tier"])
        key = tier_key(ctx.id, row["codec"])
        gone = {"context_id": ctx.id, "from_tier": row["tier"], "to_tier": DROPPED_TIER,
                "from_codec": row["codec"], "bytes": row["stored_bytes"], "utility_before": ctx.utility}  # fmt: skip
        if tier is None or not hasattr(tier, "adopt"):
            # Memory tiers do not survive a restart; a tier no longer configured is gone too.
            self._batch.event(kind="drop", reason="recovery", **gone)
        else:
            try:
                nbytes = tier.adopt(key, row["location"], row["checksum"], verify=True)
            except CorruptDataError as exc:
                log.warning("context %s lost at restart: %s", ctx.id, exc)
                self._batch.event(kind="lost", reason="lost", **gone)
            else:
                ctx.tier, ctx.codec, ctx.key, ctx.stored_bytes = row["tier"], row["codec"], key, nbytes
                ctx.checksum, ctx.location, ctx.since = row["checksum"], row["location"], row["since"]
                if row["codec"] not in ctx.sizes:
                    ctx.sizes[row["codec"]] = nbytes
                self._batch.event(kind="recovery", reason="recovery", context_id=ctx.id, to_tier=row["tier"],
                                  to_codec=row["codec"], bytes=nbytes)  # fmt: skip
                return row["location"]
        ctx.since = now
        self._batch.upsert("placements", ctx.placement_row())
        return None

    def _delete_orphans(self, adopted: set[str]) -> int:
        """Files in a disk tier that no placement points at: a move's half, or a lost copy."""
        deleted = 0
        for tier in self.tiers:
            if not hasattr(tier, "files"):
                continue
            for path in tier.files():
                if str(path) not in adopted:
                    path.unlink(missing_ok=True)
                    deleted += 1
        if deleted:
            log.info("deleted %d orphan file(s)", deleted)
        self.orphans_deleted = deleted
        return deleted

    # ------------------------------------------------------------------ helpers for commands

    def context(self, context_id: str) -> ContextState:
        """The live state of a context (read it under `state_lock`); NoSuchContextError if unknown."""
        ctx = self._contexts.get(context_id)
        if ctx is None:
            raise NoSuchContextError(context_id)
        return ctx

    @property
    def state_lock(self) -> threading.RLock:
        return self._lock

    @property
    def store_db(self):
        return self._store

    def tier_named(self, name: str):
        tier = self._tier_by_name.get(name)
        if tier is None:
            raise UnknownNameError("tier", name, [t.name for t in self.tiers])
        return tier

    def quality_floor_of(self, ctx: ContextState) -> float:
        if ctx.quality_floor is not None:
            return ctx.quality_floor
        return self._tenant_floors.get(ctx.tenant, self.config.quality_floor)

    def queue(self, fn: Callable[[object], None]) -> None:
        """Run fn(batch) under the state lock (commands add rows and events to the tick's batch)."""
        with self._lock:
            fn(self._batch)

    def flush(self) -> list[int]:
        return self._flush()


__all__ = ["ContextState", "Lookup", "Manager", "Placement", "tier_key"]
