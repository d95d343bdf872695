"""The Manager an engine embeds: store / lookup a context's KV; a control thread places them.

Threads: the engine calls store/lookup/record_profile/report_prefill from its own threads;
`start()` runs a control thread that every tick heartbeats, applies operator commands,
re-plans (on tier pressure, new profiles, and every `replan_s`) and writes state to the store.
`_lock` guards the in-memory placement state and is never held during tier I/O; `_exec_lock`
lets one thread at a time plan and move data.

Admission is off that path: `store()` admits a new context against the current placement
(`placer.admit`: its best option given the tiers' free room and the price the last full plan
put on more room) and returns; the full re-plan runs on the control thread, at once when the
admission overflowed a tier, else on the timer. A plan prices the contexts without holding
`_lock` (a chunk of its work at a time takes it), so a store() waits for the lock a few
milliseconds at most; moves check, under the lock, that a context is still where the plan
found it.

Moves are executed crash-safe by `moves.MoveExecutor` (copy, switch, delete); a restart
adopts what the previous manager left (`restart.recover`); online quality measurements flag
contexts whose profiles no longer hold (`reprofile.OnlineQuality`).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from evicctl import __version__
from evicctl.config import ManagerConfig, TierConfig, per_store_disk_dir
from evicctl.errors import (
    CorruptDataError,
    NoSuchContextError,
    StoreError,
    UnknownNameError,
    UsageError,
)
from evicctl.manager.codecs.quant import codec_backend
from evicctl.manager.description import ManagerDescription, TierDescription
from evicctl.manager.freq import DecayedRate
from evicctl.manager.kv import KV, raw_kv_bytes
from evicctl.manager.metrics_start import start_metrics
from evicctl.manager.moves import MoveExecutor
from evicctl.manager.placer.admit import admission_plan, overflows, room_prices
from evicctl.manager.placer.place import PlacementProblem, Plan, place
from evicctl.manager.placer.pricing import codec_sizes, price_problem
from evicctl.manager.priced import record_priced
from evicctl.manager.reprofile import OnlineQuality
from evicctl.manager.restart import recover
from evicctl.manager.runtime import Runtime
from evicctl.manager.state import (
    EVENT_KIND,
    PREFERRED_METRIC,
    ContextState,
    Lookup,
    Placement,
    tier_key,
)
from evicctl.store.connect import check_parent_not_shared_writable, check_private

log = logging.getLogger(__name__)

QUERY_EWMA = 0.1
# The manager row's heartbeat is rewritten at most this often; readers (CLI, dashboard) call a
# manager dead when its heartbeat is older than config.heartbeat_timeout_s, which must leave
# room for HEARTBEATS_PER_TIMEOUT heartbeats (ticks, and long plans, heartbeat as they go).
HEARTBEAT_EVERY_S = 0.5
HEARTBEATS_PER_TIMEOUT = 4
SAMPLE_EVERY_S = 1.0  # tier occupancy samples for the dashboard's history
FREQ_REFRESH_S = 10.0  # every context's row gets its decayed freq rewritten this often
ROWS_PER_FLUSH = 2048  # context rows per transaction of a state write: a store() waits for one


def check_context_id(context_id) -> None:
    """UsageError for an id the store, the placer and the tiers cannot all hold as given: a NUL
    (C strings end there, so "a" and "a\\0" would collide) or a lone surrogate (not encodable as
    UTF-8: every later database write would fail)."""
    if not isinstance(context_id, str) or not context_id:
        raise UsageError("context_id must be a non-empty string")
    if "\x00" in context_id:
        raise UsageError("context_id must not contain a NUL character")
    try:
        context_id.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError("context_id must be valid Unicode text (it holds a lone surrogate)") from None


def heartbeat_every_s(config: ManagerConfig) -> float:
    """How often the manager heartbeats under `config`; UsageError if readers would see gaps."""
    timeout_s = config.heartbeat_timeout_s
    if not timeout_s > 0:
        raise UsageError(f"heartbeat_timeout_s must be > 0; got {timeout_s}")
    if config.tick_s * HEARTBEATS_PER_TIMEOUT > timeout_s:
        raise UsageError(
            f"heartbeat_timeout_s ({timeout_s} s) must be at least {HEARTBEATS_PER_TIMEOUT} ticks "
            f"(tick_s {config.tick_s} s): the control loop heartbeats once per tick at most"
        )
    return min(HEARTBEAT_EVERY_S, timeout_s / HEARTBEATS_PER_TIMEOUT)


def disk_dir_of(config: ManagerConfig) -> Path:
    """The default disk tier folder of `config`'s database: cache_dir/disk/<12 hex of its path>.

    One folder per database, not one shared by all: a manager deletes at start every file its
    own store does not know (orphans of a crash), which would be the other stores' files."""
    return per_store_disk_dir(config.db_path, config.cache_dir)


def per_store_disk(cfg: TierConfig, config: ManagerConfig) -> TierConfig:
    """`cfg`, with the disk tier's folder defaulted to disk_dir_of(config) when it names none."""
    if cfg.name != "disk" or cfg.path is not None:
        return cfg
    return dataclasses.replace(cfg, path=disk_dir_of(config))


class Manager:
    """The engine's API (see the module docstring). Use as a context manager or call close()."""

    def __init__(self, config: ManagerConfig | None = None, *, probe: bool = True, tiers=None) -> None:
        from evicctl.control import ControlServer
        from evicctl.manager.codecs.codec import validate_codec_name
        from evicctl.manager.commands import CommandHandler
        from evicctl.manager.costs import CostModel
        from evicctl.manager.tiers.build import make_tier
        from evicctl.store.database import Store

        self.config = config = config or ManagerConfig()
        self._heartbeat_every_s = heartbeat_every_s(config)
        # dict.fromkeys: a repeated name would give two options naming one copy (see placer.place.finish_plan)
        self.codec_names = tuple(dict.fromkeys(validate_codec_name(c) for c in config.codecs))
        if "none" not in self.codec_names:
            self.codec_names = ("none", *self.codec_names)  # a fresh context can always be kept whole
        self._online = OnlineQuality(config.reprofile_drop)
        self._tenant_floors = dict(config.tenant_quality_floors)
        self._pricing = None  # PricingInputs of the last executed plan, and whether it was written
        self._pricing_written = None
        self._priced_model: tuple[dict, CostModel] | None = None
        # Admission (see the module docstring): one store() at a time admits; the price of
        # room on each tier from the last full plan (placer.admit.room_prices).
        self._admit_lock = threading.Lock()
        self._room_prices = None
        # Each tier's used_bytes (a sum over all it holds) when last asked, and rt.placed_changes then:
        # asked again after a placement changed, a plan, and with each sample.
        self._tier_used: dict[str, int] = {}
        self._tier_used_at = -1
        # False: every store() re-plans all contexts, as before admission was incremental
        # (the benchmark's baseline, and the reference the tests compare admission with).
        self.admit_incrementally = True
        # monotonic seconds of the last of each (long ago: the first tick does all of them)
        self._last_replan = self._last_heartbeat = self._last_sample = self._last_refresh = -1e9
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._closed = False

        db_file = Path(config.db_path).expanduser()
        check_private(db_file, "the database")
        check_parent_not_shared_writable(db_file, "the database")
        self.tiers = list(tiers) if tiers is not None else [
            make_tier(per_store_disk(cfg, config), rank, cache_dir=config.cache_dir)
            for rank, cfg in enumerate(config.tiers)
        ]
        try:
            for tier in self.tiers:
                if isinstance(getattr(tier, "path", None), Path):
                    check_private(tier.path, f"the {tier.name} tier's folder")
        except StoreError:
            self._close_tiers()
            raise
        if probe:
            for tier in self.tiers:
                tier.probe()
        store = Store.open(config.db_path, samples_retention_s=config.samples_retention_s)
        # the state moves, restart and commands share with this class (see runtime.py)
        self.rt = Runtime(store=store, tier_by_name={t.name: t for t in self.tiers},
                          freq=DecayedRate(config.freq_half_life_s))  # fmt: skip
        self.rt.metrics = start_metrics(self.rt, self.tiers, config)  # NULL (no-ops) unless metrics_port is set
        self._moves = MoveExecutor(self.rt, heartbeat=self.heartbeat_if_due, running=lambda: self.running)
        previous = self.rt.store.query("SELECT heartbeat_at, config_json FROM manager WHERE id = 1")
        prev = ManagerDescription.from_json(previous[0]["config_json"] if previous else None)
        self.cost_model = CostModel.from_dict(prev.cost_model) if prev.cost_model else CostModel()
        self._query_tokens = float(prev.query_tokens)
        self.rt.kv_shape = prev.kv_shape
        self._control = ControlServer(self.rt.store, __version__, self.config_json(), on_finish=self.rt.metrics.command)
        self._commands = CommandHandler(self)
        self.orphans_deleted = recover(self.rt, self.codec_names, self.tiers,
                                       previous[0]["heartbeat_at"] if previous else time.time())
        self.rt.recount_placed()
        self._control.heartbeat(self.config_json())
        self._last_heartbeat = time.monotonic()
        from evicctl.fleet.hook import attach_fleet

        self.fleet = attach_fleet(self)  # a shared redis tier: register, publish, take fleet commands

    # ------------------------------------------------------------------ lifecycle

    def _close_tiers(self) -> None:
        for tier in self.tiers:
            close = getattr(tier, "close", None)
            if close is not None:
                close()  # helper threads, connections; the data stays

    def start(self) -> Manager:
        """Start the control thread (commands, re-planning, state writes)."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="evicctl-manager", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the control thread (start() starts it again); the manager stays open."""
        if self._thread is not None:
            self._stop.set()
            self._wake.set()
            self._thread.join()
            self._thread = None
            self._stop.clear()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if getattr(self, "fleet", None) is not None:
            self.fleet.close()  # deregister first: the fleet stops routing commands here
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self.rt.metrics.close()
        with self.rt.exec_lock:
            self._write_state(time.time(), force=True)
            self.rt.flush()
            self._control.heartbeat(self.config_json())  # the latest cost model and KV shape
            self._control.stop()
            self.rt.store.close()
        self._close_tiers()

    def __enter__(self) -> Manager:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def metrics_url(self) -> str | None:
        """Where /metrics is served (config.metrics_port); None when metrics are off."""
        return self.rt.metrics.url

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
        """Keep a context's (full) KV: admitted at once at the option a full plan would most
        likely give it (placer.admit), against the current placement, without re-planning the
        others; the full re-plan follows on the control thread (see the module docstring)."""
        check_context_id(context_id)
        now = time.time()
        if not self.admit_incrementally:
            return self._store_replanning(context_id, kv, label, tenant, prefill_s, now)
        with self._admit_lock:
            with self.rt.lock:
                ctx = self.rt.contexts.get(context_id)
                if ctx is not None and ctx.stored:  # already kept: nothing new to store
                    return self._touch(ctx, now)
                ctx = self._admit_state(ctx, context_id, kv, label, tenant, prefill_s, now)
                problem = self._admission_problem(ctx, now)
                over = [self.rt.placed_bytes.get(t.name, 0) - t.capacity_bytes for t in self.tiers]
                ctx.priced_freq = float(problem.freq[0])
            plan = admission_plan(problem, over, self._room_prices)
            if plan is not None:
                pressure = overflows(plan, over)
            else:  # no option allowed on its own (a pin its copy cannot meet): as a full plan says
                with self.rt.exec_lock:
                    plan = self.plan(admit=context_id)
                pressure = True  # that plan may displace others: the next tick carries it out
            self._moves.admit(ctx, kv, plan, now)
            with self.rt.lock:
                self.rt.dirty.add(context_id)  # a plan's row write may have read it before it was admitted
        return self._after_admission(ctx, pressure)

    def _after_admission(self, ctx, pressure: bool) -> Placement:
        """A tier overflowed by an admission is relieved by the next plan: wake the control
        thread for it (or plan now when it is not running)."""
        if pressure:
            self.rt.replan_needed = True
            if self.running:
                self._wake.set()
            else:
                self.tick()
        with self.rt.lock:
            return ctx.placement()

    def _touch(self, ctx, now: float) -> Placement:
        """A store of a context already kept counts as an access (caller holds rt.lock)."""
        self.rt.freq.record(ctx.id, now)
        ctx.last_access_at = now
        self.rt.dirty.add(ctx.id)
        return ctx.placement()

    def _store_replanning(self, context_id: str, kv: KV, label, tenant, prefill_s, now: float) -> Placement:
        """store() as a full re-plan of every context (admit_incrementally off)."""
        with self.rt.exec_lock:
            with self.rt.lock:
                ctx = self.rt.contexts.get(context_id)
                if ctx is not None and ctx.stored:  # already kept: nothing new to store
                    return self._touch(ctx, now)
                ctx = self._admit_state(ctx, context_id, kv, label, tenant, prefill_s, now)
            plan = self.plan(admit=context_id)
            self._moves.admit(ctx, kv, plan, now)
            self._record_priced(plan)
            pressure = self._over_capacity()
        return self._after_admission(ctx, pressure)

    def lookup(self, context_id: str, device=None) -> Lookup | None:
        """The context's KV on `device` (default config.device), or None on a miss."""
        from evicctl.manager.codecs.codec import get_codec

        now = time.time()
        for _attempt in range(3):  # a concurrent move may delete the copy we were about to read
            with self.rt.lock:
                ctx = self.rt.contexts.get(context_id)
                if ctx is None:
                    self.rt.metrics.lookup_new()
                    return None
                if not ctx.stored:
                    self._count_miss(ctx, now)
                    return None
                tier, key, codec, nbytes = self.rt.tier_by_name[ctx.tier], ctx.key, ctx.codec, ctx.stored_bytes
            try:
                stored, load_s = tier.get(key)
            except KeyError:
                continue
            except CorruptDataError as exc:
                return self._lost_on_read(ctx, key, exc, now)
            start = time.perf_counter()
            try:
                kv = get_codec(codec).decode(stored, device or self.config.device)
            except CorruptDataError as exc:
                return self._lost_on_read(ctx, key, exc, now)
            decode_s = time.perf_counter() - start
            self.cost_model.observe_decode(codec, nbytes, decode_s)  # per quantized width
            with self.rt.lock:
                freq = self.rt.freq.record(context_id, now)
                ctx.hits += 1
                ctx.last_access_at = now
                ctx.min_tier = 0  # used again: an operator's evict no longer holds it down
                ctx.learn_token_scores(kv.token_scores)  # not known after a restart until now
                self.rt.tier_hits[tier.name] = self.rt.tier_hits.get(tier.name, 0) + 1
                self.rt.dirty.add(context_id)
            self.rt.metrics.lookup_hit(tier.name, codec, ctx.tenant, ctx.tokens, nbytes, load_s + decode_s)
            return Lookup(kv, tier.name, codec, nbytes, load_s, decode_s, freq)
        # Every read missed. A concurrent move switches the row before deleting the old copy, so
        # a context still pointing at a key its tier does not hold has lost that copy: record it
        # (placement dropped, a "lost" event, a miss) instead of failing the same way forever.
        with self.rt.lock:
            still = self.rt.contexts.get(context_id) is ctx and ctx.stored and ctx.key == key
        if still and not tier.contains(key):
            return self._lost_on_read(ctx, key, KeyError(f"tier {tier.name} no longer holds {key}"), now)
        return None

    def record_profile(self, context_id: str, codec: str, quality: float, quality_sd: float | None,
                       n_queries: int, metric: str = PREFERRED_METRIC, raw_mean: float | None = None,
                       f1: float | None = None) -> None:  # fmt: skip
        """Store a codec's measured quality for a context; the placer uses it from the next plan."""
        codec = self._checked_quality(codec, quality)
        with self.rt.lock:
            ctx = self.context(context_id)
            ctx.keep_profile(codec, quality, quality_sd, metric)
            self._online.profiled(context_id, codec)  # a fresh profile: the online check starts over
            self.rt.metrics.profiled(codec)
            self.rt.batch.upsert("profiles", {
                "context_id": context_id, "codec": codec, "metric": metric, "quality": float(quality),
                "quality_sd": quality_sd, "raw_mean": raw_mean, "f1": f1, "n_queries": int(n_queries),
                "measured_at": time.time(),
            })  # fmt: skip
            self.rt.replan_needed = True
        if not self.running:
            self.rt.flush()

    def record_online_quality(self, context_id: str, codec: str, quality: float) -> bool:
        """One served answer's measured quality in [0, 1] (the profiling metric), with the codec
        its KV was served at. Returns needs_reprofile(context_id) after it.

        When the context's running mean for that codec falls below the codec's stored profile
        by more than config.reprofile_drop, the profile is stale: an event (kind "reprofile",
        reason "quality-drop") is written and the context is a re-profiling candidate until
        record_profile brings a new profile of that codec.
        """
        codec = self._checked_quality(codec, quality)
        with self.rt.lock:
            ctx = self.context(context_id)
            profile = ctx.profiles.get(codec)
            profile_quality = 1.0 if codec == "none" else (profile[0] if profile else None)  # none is the reference
            shortfall = self._online.record(context_id, codec, float(quality), profile_quality)
            if shortfall is not None:
                log.info("context %s: online quality of %s is %.2f below its profile; re-profile it",
                         context_id, codec, shortfall)  # fmt: skip
                self.rt.metrics.reprofile_flagged()
                self.rt.batch.event(context_id=context_id, kind="reprofile", reason="quality-drop",
                                  from_tier=ctx.tier, from_codec=codec, utility_before=ctx.utility)  # fmt: skip
            needs = self._online.needs_reprofile(context_id)
        if shortfall is not None and not self.running:
            self.rt.flush()
        return needs

    def needs_reprofile(self, context_id: str) -> bool:
        """Whether online quality says one of the context's profiles no longer holds."""
        with self.rt.lock:
            self.context(context_id)
            return self._online.needs_reprofile(context_id)

    def reprofile_candidates(self) -> list[str]:
        """Contexts that need re-profiling, the costliest first (access rate times the drop)."""
        with self.rt.lock:
            ids = [cid for cid in self.rt.contexts if self._online.needs_reprofile(cid)]
            rates = self.rt.freq.rates(ids, time.time())
            return self._online.candidates(dict(zip(ids, rates.tolist(), strict=True)))

    def report_prefill(self, new_tokens: int, cached_tokens: int, seconds: float) -> None:
        """A prefill the engine timed: refines the cost model (and, for hits, the query size)."""
        self.cost_model.observe_prefill(new_tokens, cached_tokens, seconds)
        self.rt.metrics.prefill(cached_tokens, seconds)
        if cached_tokens > 0 and new_tokens > 0:
            self._query_tokens += QUERY_EWMA * (new_tokens - self._query_tokens)

    def known(self, context_id: str) -> bool:
        with self.rt.lock:
            return context_id in self.rt.contexts

    def placement(self, context_id: str) -> Placement | None:
        with self.rt.lock:
            ctx = self.rt.contexts.get(context_id)
            return None if ctx is None else ctx.placement()

    def context_ids(self) -> list[str]:
        with self.rt.lock:
            return list(self.rt.contexts)

    def config_json(self) -> dict:
        """The manager's description as written into manager.config_json (see describe())."""
        return self.describe().to_json()

    def describe(self) -> ManagerDescription:
        """What readers (snapshot, CLI, dashboard) need: settings, tiers and their folders, and
        the figures the last plan priced options with, so they price as the placer did."""
        tiers = tuple(TierDescription(t.name, t.backend, t.rank, t.capacity_bytes,
                                      str(t.path) if getattr(t, "path", None) else None) for t in self.tiers)  # fmt: skip
        c = self.config
        return ManagerDescription(
            alpha=c.alpha, codecs=self.codec_names, tiers=tiers, db_path=str(c.db_path), cache_dir=str(c.cache_dir),
            disk_dir=next((t.path for t in tiers if t.backend == "disk"), None), device=c.device,
            heartbeat_timeout_s=c.heartbeat_timeout_s, heartbeat_every_s=self._heartbeat_every_s, tick_s=c.tick_s,
            replan_s=c.replan_s, quality_floor=c.quality_floor, tenant_quality_floors=tuple(self._tenant_floors.items()),
            reprofile_drop=c.reprofile_drop, query_tokens=self._query_tokens, kv_shape=self.rt.kv_shape,
            cost_model=self.cost_model.to_dict(), pricing=self._pricing, codec_backend=codec_backend(c.device),
        )  # fmt: skip

    def _checked_quality(self, codec: str, quality: float) -> str:
        from evicctl.manager.codecs.codec import validate_codec_name

        if not 0.0 <= quality <= 1.0:
            raise UsageError(f"quality must be in [0, 1]; got {quality}")
        return validate_codec_name(codec)

    # ------------------------------------------------------------------ the control loop

    def tick(self) -> None:
        """One control step: heartbeat, operator commands, re-plan if due, write state."""
        now = time.time()
        with self.rt.exec_lock:
            if self._closed and self._thread is None:
                return
            self.heartbeat_if_due()
            self._control.poll(self._commands)
            # Intervals on the monotonic clock: a wall clock set back must not stop the timers
            # (timestamps written to the store stay wall time).
            timer = time.monotonic() - self._last_replan >= self.config.replan_s
            planned = False
            if timer or self.rt.replan_needed or self._over_capacity():
                self.rt.replan_needed = False
                self._last_replan = time.monotonic()
                plan = self.plan(rebalance=timer)
                self.execute(plan)
                self._room_prices = room_prices(plan)  # what the next admissions pay for room
                planned = True
            self._write_state(now, measure=planned)
            self.rt.flush()
            if self._pricing is not self._pricing_written:  # readers reprice with it: write it at once
                self._control.heartbeat(self.config_json())
                self._pricing_written, self._last_heartbeat = self._pricing, time.monotonic()

    def heartbeat_if_due(self) -> None:
        """Rewrite the manager row's heartbeat if the last one is HEARTBEAT_EVERY_S old (on the
        monotonic clock: after the wall clock jumps back, readers must still see it alive)."""
        mono = time.monotonic()
        if mono - self._last_heartbeat >= self._heartbeat_every_s and not self._closed:
            self._control.heartbeat(self.config_json())
            self._last_heartbeat = mono

    def _over_capacity(self) -> bool:
        """Whether a tier holds more than its capacity, as the placer counts (the contexts'
        copies; O(tiers), where asking each tier sums everything it holds)."""
        with self.rt.lock:
            return any(self.rt.placed_bytes.get(t.name, 0) > t.capacity_bytes for t in self.tiers)

    def _admission_problem(self, ctx: ContextState, now: float) -> PlacementProblem:
        """The one-context problem of admitting `ctx`, priced with the figures of the last
        executed plan (the ones its row and `evicctl show` price with), or the live ones
        before the first plan. Under _lock."""
        from types import SimpleNamespace

        inputs = self._pricing
        tiers, cost_model, query_tokens = self.tiers, self._pricing_model(), self._query_tokens
        if inputs is not None:
            bps = dict(inputs.read_bps)
            tiers = [SimpleNamespace(name=t.name, capacity_bytes=t.capacity_bytes, read_bps=bps.get(t.name, t.read_bps))
                     for t in self.tiers]  # fmt: skip
            cost_model, query_tokens = self._pricing_model(inputs.cost_model), inputs.query_tokens
        return price_problem([ctx], [self.rt.freq.rate(ctx.id, now)], codecs=self.codec_names, tiers=tiers,
                             cost_model=cost_model, alpha=self.config.alpha, query_tokens=query_tokens,
                             floor_of=self.quality_floor_of, admit=ctx.id)  # fmt: skip

    # ------------------------------------------------------------------ planning and moves

    def plan(self, *, admit: str | None = None, rebalance: bool = False,
              overrides: dict[str, dict] | None = None) -> Plan:  # fmt: skip
        """Place every stored context (and `admit`, held whole by the caller); operator commands
        plan with `overrides` (see problem())."""
        started = time.perf_counter()
        plan = place(self.problem(admit=admit, rebalance=rebalance, overrides=overrides))
        self.rt.metrics.planned(time.perf_counter() - started, len(plan))
        return plan

    def problem(self, *, admit: str | None = None, rebalance: bool = False,
                overrides: dict[str, dict] | None = None) -> PlacementProblem:  # fmt: skip
        """The placer's input from the current state. overrides: context id -> any of
        pin_tier, pin_codec, force_tier, force_codec, min_tier (by name), for plans the
        operator asks about before they take effect."""
        now = time.time()
        with self.rt.lock:
            known = list(self.rt.contexts.items())  # one C-speed copy; the rest without the lock
        states = [ctx for cid, ctx in known if ctx.stored or cid == admit]
        in_use = {ctx.codec for ctx in states if ctx.stored} - set(self.codec_names)
        # A copy at a codec no longer offered adds it. The same tuple object otherwise: the
        # priced rows cached on each context are checked against it by identity first.
        codecs = self.codec_names + tuple(sorted(in_use)) if in_use else self.codec_names
        return price_problem(
            states,
            self.rt.freq.rates([ctx.id for ctx in states], now),
            codecs=codecs,
            tiers=self.tiers,
            cost_model=self._pricing_model(),
            alpha=self.config.alpha,
            query_tokens=self._query_tokens,
            floor_of=self.quality_floor_of,
            admit=admit,
            rebalance=rebalance,
            overrides=overrides,
            settled_before=now - self.config.rebalance_min_residence_s if rebalance else None,
        )

    def execute(self, plan: Plan, *, actor: str = "policy", command_id: int | None = None) -> list[int]:
        """Carry out a plan's moves (copy, switch rows, delete old copies); returns event ids."""
        ids = self._moves.execute(plan, actor=actor, command_id=command_id)
        self._record_priced(plan)
        return ids

    def _record_priced(self, plan: Plan) -> None:
        """The utility where it now is of each context whose row changed, with the figures
        `plan` priced with (priced.py)."""
        inputs = getattr(getattr(plan, "problem", None), "priced_with", None)  # None: a plan built by hand
        if inputs is not None:
            self._pricing = record_priced(self.rt, plan, self._pricing_model(inputs.cost_model), self._pricing)

    def _pricing_model(self, data: dict | None = None):
        """A copy of the cost model (of `data`, by default the live one's figures) that engine
        threads do not refine while a plan prices with it: its to_dict() is what the plan
        records, and what readers rebuild it from."""
        from evicctl.manager.costs import CostModel

        data = self.cost_model.to_dict() if data is None else data
        if self._priced_model is None or self._priced_model[0] != data:
            self._priced_model = (data, CostModel.from_dict(data))
        return self._priced_model[1]

    def _admit_state(self, ctx, context_id, kv: KV, label, tenant, prefill_s, now) -> ContextState:
        """Create (or refresh a dropped) context's state for admission. Under _lock."""
        # window_numel counts every 16-bit side tensor a stored form carries (window queries, token scores)
        shape = (kv.layers, kv.kv_heads, kv.head_dim, kv.keys[0].element_size(), kv.side_numel)
        self.rt.kv_shape = dict(zip(("layers", "kv_heads", "head_dim", "dtype_bytes", "window_numel"), shape, strict=True))
        if ctx is None:
            ctx = ContextState(context_id, kv.tokens, raw_kv_bytes(kv.tokens, *shape[:4]), created_at=now)
            self.rt.contexts[context_id] = ctx
        ctx.tokens, ctx.raw_bytes, ctx.shape = kv.tokens, raw_kv_bytes(kv.tokens, *shape[:4]), shape
        ctx.label = label if label is not None else ctx.label
        ctx.tenant = tenant
        ctx.last_access_at = now
        ctx.learn_token_scores(kv.token_scores)
        ctx.set_sizes(codec_sizes(self.codec_names, kv.tokens, shape, ctx.raw_bytes))
        if prefill_s is not None and prefill_s > 0:
            ctx.miss_s = float(prefill_s)
        self.rt.freq.record(context_id, now)
        return ctx

    def _lost_on_read(self, ctx: ContextState, key: str | None, exc: Exception, now: float) -> None:
        """A copy failed its checksum or would not decode: never served, and a miss now."""
        self._moves.lose(ctx.id, key, str(exc))
        with self.rt.lock:
            self._count_miss(ctx, now)

    def _count_miss(self, ctx: ContextState, now: float) -> None:
        """Under _lock."""
        self.rt.freq.record(ctx.id, now)  # a miss is a use: the context is worth keeping
        ctx.misses += 1
        ctx.last_access_at = now
        self.rt.misses += 1
        self.rt.metrics.lookup_miss(ctx.tenant, ctx.tokens)
        self.rt.dirty.add(ctx.id)

    # ------------------------------------------------------------------ state writes

    def _write_state(self, now: float, *, force: bool = False, measure: bool = False) -> None:
        """Batch the dirty contexts, every tier and (each SAMPLE_EVERY_S) occupancy samples.

        Many dirty rows (a re-plan, the periodic freq refresh) are written ROWS_PER_FLUSH at a
        time, each chunk built under the lock and flushed in its own transaction: a store()
        waits for one chunk, not for 100,000 rows. Tiers are asked for their occupancy (a sum
        over all they hold) with the samples, after a plan (measure) and when forced."""
        with self.rt.lock:
            dirty, self.rt.dirty = self.rt.dirty, set()
            if force or time.monotonic() - self._last_refresh >= FREQ_REFRESH_S:
                self._last_refresh = time.monotonic()
                dirty |= self.rt.contexts.keys()  # freq decays for everyone: refresh all rows now and then
        ids = list(dirty)
        rates = self.rt.freq.rates(ids, now).tolist()
        for start in range(0, len(ids), ROWS_PER_FLUSH):
            batch = self.rt.batch if len(ids) <= ROWS_PER_FLUSH else self.rt.store.batch()
            with self.rt.lock:
                for cid, rate in zip(ids[start : start + ROWS_PER_FLUSH], rates[start : start + ROWS_PER_FLUSH], strict=True):
                    ctx = self.rt.contexts.get(cid)
                    if ctx is not None:
                        batch.upsert("contexts", ctx.row(rate))
            if batch is not self.rt.batch:
                try:
                    self.rt.store.flush(batch)
                except Exception:
                    with self.rt.lock:  # written next time
                        self.rt.dirty.update(ids[start:])
                    raise
        sample = force or time.monotonic() - self._last_sample >= SAMPLE_EVERY_S
        changes = self.rt.placed_changes
        if sample or measure or changes != self._tier_used_at:
            self._tier_used, self._tier_used_at = {tier.name: tier.used_bytes for tier in self.tiers}, changes
        with self.rt.lock:
            for tier in self.tiers:
                self.rt.batch.upsert("tiers", {
                    "name": tier.name, "backend": tier.backend, "rank": tier.rank,
                    "capacity_bytes": tier.capacity_bytes, "used_bytes": self._tier_used[tier.name],
                    "read_bps": tier.read_bps, "write_bps": tier.write_bps,
                    "hits": self.rt.tier_hits.get(tier.name, 0), "updated_at": now,
                })  # fmt: skip
            if sample:
                self._last_sample = time.monotonic()
                for tier in self.tiers:
                    self.rt.batch.sample(
                        ts=now, tier=tier.name, used_bytes=self._tier_used[tier.name],
                        capacity_bytes=tier.capacity_bytes, hits=self.rt.tier_hits.get(tier.name, 0),
                        misses=self.rt.misses,
                    )  # fmt: skip

    # ------------------------------------------------------------------ helpers for commands

    def context(self, context_id: str) -> ContextState:
        """The live state of a context (read it under `state_lock`); NoSuchContextError if unknown."""
        ctx = self.rt.contexts.get(context_id)
        if ctx is None:
            raise NoSuchContextError(context_id)
        return ctx

    @property
    def state_lock(self) -> threading.RLock:
        return self.rt.lock

    @property
    def fault(self) -> Callable[[str], None] | None:
        """Test hook between the steps of a move (see Runtime.fault)."""
        return self.rt.fault

    @fault.setter
    def fault(self, hook: Callable[[str], None] | None) -> None:
        self.rt.fault = hook

    def tier_named(self, name: str):
        tier = self.rt.tier_by_name.get(name)
        if tier is None:
            raise UnknownNameError("tier", name, [t.name for t in self.tiers])
        return tier

    def quality_floor_of(self, ctx: ContextState) -> float:
        if ctx.quality_floor is not None:
            return ctx.quality_floor
        return self._tenant_floors.get(ctx.tenant, self.config.quality_floor)

    def queue(self, fn: Callable[[object], None]) -> None:
        """Run fn(batch) under the state lock (commands add rows and events to the tick's batch)."""
        with self.rt.lock:
            fn(self.rt.batch)

    def flush(self) -> list[int]:
        return self.rt.flush()


__all__ = [
    "EVENT_KIND",
    "PREFERRED_METRIC",
    "ContextState",
    "Lookup",
    "Manager",
    "Placement",
    "disk_dir_of",
    "heartbeat_every_s",
    "tier_key",
]
