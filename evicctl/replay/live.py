"""Live mode: the real engine and model serve a small workload through the real Manager, and
the replay predicts the same workload; their TTFTs are compared (they should agree within 20%).

The served contexts are the ones whose quality was measured (evicctl/data/smollm2_profiles.json),
so the Manager gets their real profiles: right after a context is first stored, as the engine's
profiler would publish them. A request's quality is its context's measured quality under the
codec that served it (measuring it live would cost a full prefill per request).

The replay of the same workload uses: the same contexts (their real token counts and profile
rows), the same requests (the live arrival times and each question's real token count), the
Manager's probed tier bandwidths and capacities, and prefill costs measured in this process
just before serving. The Manager runs without its control thread and without the re-plan
timer, so its decisions depend only on the requests (pressure re-plans inside store()).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from evicctl.errors import UsageError

LIVE_POLICIES = ("evicpress", "placement-only", "prefill")
LIVE_DEFAULTS = {"contexts": 6, "requests": 24, "capacity": 0.4}
MAX_NEW_TOKENS = 1  # TTFT needs the first token only


class ProfiledManager:
    """The real Manager; after a context is stored, its measured profiles are recorded."""

    def __init__(self, manager, profiles: dict[str, list[tuple[str, float, float, int]]]) -> None:
        self.manager, self.profiles = manager, profiles

    def __getattr__(self, name):
        return getattr(self.manager, name)

    def store(self, context_id, kv, **kwargs):
        placement = self.manager.store(context_id, kv, **kwargs)
        for codec, quality, sd, n in self.profiles.get(context_id, ()):
            self.manager.record_profile(context_id, codec, quality, sd, n, "teacher-forced")
        return placement


class NoReuse:
    """A manager that keeps nothing: every request is a full prefill (the `prefill` policy)."""

    def __init__(self) -> None:
        from evicctl.manager.costs import CostModel

        self.cost_model = CostModel()

    def lookup(self, context_id, device=None):
        return None

    def store(self, *args, **kwargs):
        return None

    def report_prefill(self, new_tokens: int, cached_tokens: int, seconds: float) -> None:
        self.cost_model.observe_prefill(new_tokens, cached_tokens, seconds)


def run_live(opts, *, console=None, show_progress: bool = True) -> dict:
    from evicctl.config import default_cache_dir
    from evicctl.engine.model import load_model
    from evicctl.replay.calibrate import prefill_samples
    from evicctl.replay.profiles import DEFAULT_PROFILES, load_profiles

    policies = list(opts.policy) or ["evicpress"]
    bad = [p for p in policies if p not in LIVE_POLICIES]
    if bad:
        raise UsageError(f"live mode serves through the real Manager; policies: {', '.join(LIVE_POLICIES)} (not {', '.join(bad)})")
    n_contexts = opts.contexts if opts.contexts != 10_000 else LIVE_DEFAULTS["contexts"]
    n_requests = opts.requests if opts.requests != 100_000 else LIVE_DEFAULTS["requests"]
    capacity = opts.capacity if opts.capacity is not None else LIVE_DEFAULTS["capacity"]
    profiles = load_profiles(opts.profiles or DEFAULT_PROFILES)
    model, tokenizer = load_model(default_cache_dir(), "cpu")
    contexts = _measured_contexts(tokenizer, profiles, n_contexts)
    _warm_up(model, tokenizer, contexts[0])
    samples = None
    if opts.live_calibrate:  # the machine as it is now (busy or not), before serving
        samples = prefill_samples(model, tokenizer, repeats=2, lengths=(256, 768, 1280), cached=(1024,), stat=statistics.mean)
    docs, summaries = [], []
    for name in policies:
        with tempfile.TemporaryDirectory(prefix="evicctl-live-") as tmp:
            doc = _serve(name, opts, Path(tmp), model, tokenizer, contexts, profiles, samples,
                         n_requests, capacity, console, show_progress)
        docs.append(doc)
        summaries += [doc["live"], *doc["replays"]]
    return {
        "mode": "live",
        "scenario": docs[0]["scenario"],
        "catalog": docs[0]["catalog"],
        "trace": docs[0]["trace"],
        "runs": summaries,
        "agreement": {f"{d['live']['policy']}, {costs}": a for d in docs for costs, a in d["agreement"].items()},
        "per_request": {d["live"]["policy"]: d["per_request"] for d in docs},
        "notes": [
            "live: the real engine, model and Manager on this machine; replay: the same requests, predicted",
            "costs observed: the prefill cost model fitted on the prefills the engine timed during the run "
            "(checks the replay's decisions and delay composition); costs calibrated: fitted on prefills timed "
            "before the run (also checks that costs measured apart transfer; on a shared machine they drift)",
            "quality of a served request = its context's measured quality under the codec that served it",
        ],
    }


def _warm_up(model, tokenizer, context) -> None:
    """One prefill before serving: the first forward after loading pays one-time costs
    (allocations, kernel selection) that a running server has long paid."""
    from evicctl.engine import hf, prompt

    hf.forward(model, prompt.context_ids(tokenizer, context.text)[:, :512])


def _measured_contexts(tokenizer, profiles, n: int):
    """The first n measured contexts, with their text and questions, drawn as
    measure_profiles drew them (same count, question minimum and seed)."""
    from evicctl.engine.data import load_contexts

    want = list(profiles.context_ids)[:n]
    found = []
    for count in dict.fromkeys((len(profiles.context_ids), 12, 16, 24, 32)):  # a partial file: its draw was larger
        drawn = load_contexts(tokenizer, count, hotpot_fraction=0.0,
                              min_questions=max(2, profiles.questions_per_context), seed=0)
        pool = {c.id: c for c in drawn}
        found = [pool[c] for c in want if c in pool]
        if len(found) == len(want):
            break
    if len(found) < n:
        raise UsageError(f"only {len(found)} of the measured contexts are in the installed data; use --contexts {len(found)}")
    return found[:n]


def _serve(name, opts, tmp: Path, model, tokenizer, contexts, profiles, samples, n_requests, capacity, console, show):
    from evicctl.engine import prompt
    from evicctl.engine.engine import Engine
    from evicctl.manager.costs import CostModel
    from evicctl.replay.catalog import build_catalog
    from evicctl.replay.progress import progress_bar
    from evicctl.replay.replay import MISS
    from evicctl.replay.trace import Trace, zipf_trace

    index = np.array([profiles.context_ids.index(c.id) for c in contexts])
    tokens = np.array([prompt.context_ids(tokenizer, c.text).shape[1] for c in contexts])
    before = _scenario(model, capacity, opts, samples=samples, coef=None if samples else tuple(CostModel().coef))
    build = lambda sc: build_catalog(sc, profiles, len(contexts), seed=opts.seed, tokens=tokens, profile_index=index)  # noqa: E731
    catalog = build(before)
    drawn = zipf_trace(len(contexts), n_requests, qps=opts.qps or 1.0, zipf=opts.zipf, seed=opts.seed)
    questions = _questions(contexts, drawn.context, profiles.questions_per_context)
    q_tokens = np.array([prompt.question_ids(tokenizer, q.question).shape[1] for q in questions])

    manager, engine_manager = _manager(name, tmp, catalog, contexts, profiles, index, opts)
    engine = Engine(engine_manager, model, tokenizer, "cpu")
    ttft, served_t, served_c, at, store_s = [], [], [], [], []
    start = time.perf_counter()
    try:
        with progress_bar(console, show) as bar:
            task = bar.add_task(f"live {name}", total=n_requests)
            for k, ci in enumerate(drawn.context.tolist()):
                ctx = contexts[ci]
                if opts.live_open_loop:  # arrivals on the clock: a request waits behind the one being served
                    time.sleep(max(0.0, float(drawn.at_s[k]) - (time.perf_counter() - start)))
                at.append(time.perf_counter() - start)
                answer = engine.answer(ctx.id, ctx.text, questions[k].question, max_new_tokens=MAX_NEW_TOKENS)
                ttft.append(answer.ttft.first_token_s)
                store_s.append(answer.ttft.store_s)  # a miss's store after its answer (0 for a hit)
                served_t.append(catalog.tiers.index(answer.hit_tier) if answer.hit else MISS)
                served_c.append(catalog.codec_index(answer.codec) if answer.hit else -1)
                bar.advance(task)
        probed_bps = {t.name: t.read_bps for t in getattr(manager, "tiers", [])}
        probed_write_bps = {t.name: t.write_bps for t in getattr(manager, "tiers", [])}
        observed = engine_manager.cost_model.to_dict()["history"]  # the prefills the engine timed
    finally:
        if manager is not None:
            manager.close()
    wall_s = time.perf_counter() - start
    for tier, bps in probed_bps.items():  # loads priced with the bandwidths the Manager probed
        before = before.with_tier_bps(tier, bps)
    trace = Trace(np.array(at), drawn.context, q_tokens, f"live, {len(contexts)} contexts, zipf {opts.zipf}")
    live = _live_summary(name, catalog, trace, np.array(ttft), np.array(served_t), np.array(served_c))
    scenarios = {"costs observed": replace(before, prefill_coef=_fit_observed(observed, before))}
    if samples:
        scenarios["costs calibrated"] = before
    replays, agreement = [], {}
    per_request = {"context": trace.context.tolist(), "query_tokens": q_tokens.tolist(), "served_tier": served_t,
                   "live_ttft_s": [round(x, 4) for x in ttft], "prefills_timed": observed,
                   "start_s": [round(x, 4) for x in at], "store_s": [round(x, 4) for x in store_s]}
    if opts.live_open_loop:
        per_request["arrival_s"] = [round(float(x), 4) for x in drawn.at_s]
    for label, sc in scenarios.items():
        replayed = build(sc)
        predicted = _replay_live(name, replayed, trace)
        per_request[f"replay_ttft_s ({label})"] = [round(float(x), 4) for x in predicted.ttft_s]
        summary = predicted.summary() | {"policy": f"{name} (replay, {label})"}
        replays.append(summary)
        agreement[label] = {
            "ttft_mean_live_s": live["ttft_mean_s"],
            "ttft_mean_replay_s": summary["ttft_mean_s"],
            "ratio": summary["ttft_mean_s"] / live["ttft_mean_s"],
            "same_outcome": float((np.array(served_t) == predicted.served_tier).mean()),  # same tier, or both missed
            "same_codec": float(((np.array(served_t) == predicted.served_tier)
                                 & (np.array(served_c) == predicted.served_codec)).mean()),
            "wall_s": wall_s,
        }
        if opts.live_open_loop:
            agreement[label] |= queueing_agreement(replayed, trace, predicted, drawn.at_s, np.array(at), np.array(ttft),
                                                   write_bps=probed_write_bps, live_store_s=np.array(store_s))
            per_request[f"replay_store_s ({label})"] = _store_charges(replayed, trace, predicted, probed_write_bps)
    return {
        "scenario": before.to_json(),
        "catalog": catalog.to_json(),
        "trace": trace.to_json(),
        "live": live,
        "replays": replays,
        "agreement": agreement,
        "per_request": per_request,
    }


def queueing_agreement(catalog, trace, predicted, arrival_s, start_s, ttft_s, *, write_bps=None, live_store_s=None) -> dict:
    """TTFT with waiting, live (waited + served) against the queueing model on the replay's
    decisions and the same arrivals (queueing.py), with admissions charged their store (tiers
    written at `write_bps`, as the Manager probed them) and, for comparison, without stores and
    with synchronous stores (the engine served here writes before it takes the next request);
    and the store time per miss (kept or not), the engine's (`live_store_s`, per request, 0 for
    a hit) against the model's charge."""
    from evicctl.replay.queueing import queued_ttft, service_times, store_costs
    from evicctl.replay.replay import MISS

    arrival = np.asarray(arrival_s, dtype=float)
    live = (start_s - arrival) + ttft_s
    service = service_times(catalog, trace, predicted, store_costs(catalog, write_bps, kvzip_pass=False))
    model = queued_ttft(arrival, service)
    bare = queued_ttft(arrival, service_times(catalog, trace, predicted, store=False))
    synchronous = queued_ttft(arrival, service_times(catalog, trace, predicted, store_costs(catalog, write_bps, synchronous=True, kvzip_pass=False)))
    charged = (service.store_s + service.write_s)[predicted.served_tier == MISS]
    out = {
        "queued_ttft_mean_live_s": float(live.mean()),
        "queued_ttft_mean_replay_s": float(model.mean()),
        "queued_ratio": float(model.mean() / live.mean()),
        "queued_ttft_p90_live_s": float(np.percentile(live, 90)),
        "queued_ttft_p90_replay_s": float(np.percentile(model, 90)),
        "queued_ttft_mean_replay_no_store_s": float(bare.mean()),
        "queued_ttft_p90_replay_no_store_s": float(np.percentile(bare, 90)),
        "queued_ttft_mean_replay_sync_store_s": float(synchronous.mean()),
        "queued_ttft_p90_replay_sync_store_s": float(np.percentile(synchronous, 90)),
        "waited_share_live": float(((start_s - arrival) > 0.01).mean()),
        "misses_replay": len(charged),
        "stores_replay": int((predicted.admitted_tier >= 0).sum()),
        "store_s_per_miss_replay": float(charged.mean()) if len(charged) else 0.0,
    }
    if live_store_s is not None:
        stored = np.asarray(live_store_s, dtype=float)
        stored = stored[stored > 0]  # the misses: a hit stores nothing
        out |= {"misses_live": len(stored), "store_s_per_miss_live": float(stored.mean()) if len(stored) else 0.0}
    return out


def _store_charges(catalog, trace, predicted, write_bps) -> list[float]:
    """Per request, the seconds the queueing model charges its store (encode + write; 0: none)."""
    from evicctl.replay.queueing import store_costs, store_times

    compute_s, _, link_s = store_times(catalog, trace, predicted, store_costs(catalog, write_bps, kvzip_pass=False))
    return [round(float(x), 4) for x in compute_s + link_s]


def _fit_observed(history, fallback) -> tuple[float, ...]:
    """The manager's own fit (CostModel: least squares on seconds, so the mean of noisy
    timings) of the prefills timed during the run, misses and hits."""
    from evicctl.manager.costs import CostModel

    rows = [tuple(h) for h in history if h[0] > 0 and h[2] > 0]
    if not rows:
        return tuple(fallback.cost_model().coef)
    return tuple(float(c) for c in CostModel(prefill_coef=fallback.cost_model().coef, history=rows).coef)


def _replay_live(name, catalog, trace):
    from evicctl.replay.policies import make_policy
    from evicctl.replay.replay import replay

    policy = make_policy(name, alpha=catalog.scenario.alpha)
    if hasattr(policy, "headroom"):  # the Manager re-plans at every admission, to full capacity
        policy.headroom = policy.spill_headroom = 0.0
        policy.tick_requests = 0
    return replay(policy, catalog, trace, warmup=0.0)


def _scenario(model, capacity, opts, *, samples, coef):
    """cpu-local's tiers and decode costs, this model's shape, prefill from `samples` (fitted)
    or `coef`."""
    from evicctl.replay.scenario import load_scenario, scenario_from_dict

    cfg = model.config
    try:
        base = load_scenario("cpu-local").to_json()
    except UsageError:
        base = {"tiers": [{"name": "cpu", "read_bps": 8e9, "share": 80}, {"name": "disk", "read_bps": 1e9, "share": 800}],
                "decode_bps": {}, "alpha": 2.0}
    d = {
        **base,
        "name": "cpu-local (live)",
        "description": "this machine, costs measured in this run",
        "source": "prefill timed in this process; tier bandwidths probed by the Manager",
        "model": {"name": "SmolLM2-135M-Instruct", "layers": cfg.num_hidden_layers, "kv_heads": cfg.num_key_value_heads,
                  "head_dim": getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads,
                  "dtype_bytes": 4, "q_heads": cfg.num_attention_heads, "window": 16},
        "prefill_samples": samples or [],
        "prefill_coef": None if samples else list(coef),
        "context_tokens": {"distribution": "measured"},
        "capacity": capacity,
    }
    s = scenario_from_dict(d)
    return replace(s, alpha=float(opts.alpha)) if opts.alpha is not None else s


def _questions(contexts, drawn, measured: int):
    """Each request's question: its context's measured test half, cycled."""
    out, used = [], {}
    for ci in drawn.tolist():
        ctx = contexts[ci]
        asked = list(ctx.questions)[: measured or len(ctx.questions)]
        pool = asked[len(asked) // 2 :] or asked
        k = used.get(ci, 0)
        used[ci] = k + 1
        out.append(pool[k % len(pool)])
    return out


def _manager(name, tmp: Path, catalog, contexts, profiles, index, opts):
    """(the real Manager or None, what the engine talks to)."""
    if name == "prefill":
        return None, NoReuse()
    from evicctl.config import ManagerConfig, TierConfig
    from evicctl.manager.manager import Manager

    codecs = ("none",) if name == "placement-only" else catalog.codecs
    tiers = tuple(
        TierConfig(t, capacity_bytes=int(c), path=tmp / "disk" if t == "disk" else None)
        for t, c in zip(catalog.tiers, catalog.capacity_bytes, strict=True)
    )
    config = ManagerConfig(db_path=tmp / "evicctl.db", cache_dir=tmp, tiers=tiers, codecs=codecs,
                           alpha=catalog.scenario.alpha, replan_s=1e12)
    manager = Manager(config)
    manager.cost_model = catalog.scenario.cost_model()  # the costs this run measured
    rows = {}
    for c, m in zip(contexts, index, strict=True):
        rows[c.id] = [
            (codec, float(profiles.estimate[m, k]), float(profiles.sd[m, k]), 3)
            for k, codec in enumerate(profiles.codecs) if codec != "none" and codec in codecs
        ]
    return manager, ProfiledManager(manager, rows)


def _live_summary(name, catalog, trace, ttft, served_t, served_c) -> dict:
    from evicctl.replay.replay import RunResult

    quality = np.ones(len(ttft))
    hits = served_t >= 0
    quality[hits] = catalog.truth[served_c[hits], trace.context[hits]]
    result = RunResult(
        policy=f"{name} (live)", family="live", codec=None, alpha=catalog.scenario.alpha, tiers=catalog.tiers,
        served_tier=served_t, served_codec=served_c, ttft_s=ttft, quality=quality, warmup=0,
        bytes_admitted=0, bytes_moved=0,
        bytes_loaded=int(catalog.stored_bytes[served_c[hits], trace.context[hits]].sum()),
        moves=0, drops=0, wall_s=0.0,
    )
    return result.summary()
