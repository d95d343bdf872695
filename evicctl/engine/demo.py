"""`evicctl demo`: the reference engine, a manager and a workload in one process.

The manager writes to the store as it runs, so `evicctl top / ls / pin / evict / history`
work against it from another terminal. On a terminal the dashboard runs in this process
(the workload serves from a worker thread); `--headless` shows a progress bar and ends
with a summary table.

Defaults make real pressure: 12 contexts of ~1.1k tokens are ~50 MB of fp32 KV each,
against a 64 MiB top tier. Profiling never blocks a request: units of it run while the
engine waits for the next arrival, and the shipped priors (priors.py) give every context a
calibrated estimate before its own profile exists.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from evicctl.config import (
    DEFAULT_CODECS,
    ManagerConfig,
    TierConfig,
    default_cache_dir,
    default_db_path,
    per_store_disk_dir,
)
from evicctl.errors import UsageError

log = logging.getLogger(__name__)

from evicctl.engine.demo_defaults import (  # noqa: E402 (kept beside the module's own constants)
    DEFAULT_CONTEXTS,
    DEFAULT_CPU_BYTES,
    DEFAULT_DISK_BYTES,
    DEFAULT_GPU_BYTES,
    DEFAULT_METRICS_PORT,
    DEFAULT_RATE_RPS,
    DEFAULT_ZIPF,
)

PLAIN_PROGRESS_S = 10.0  # headless without a terminal: one progress line this often
HEADLESS_REQUESTS_PER_CONTEXT = 3  # headless with neither --requests nor --duration
STARVED_S = 20.0  # without idle time for this long, profile one unit anyway
STALE_CHECK_S = 10.0  # how often an idle engine asks the manager which profiles went stale


@dataclass(frozen=True)
class Served:
    """One served request, for the summary."""

    index: int
    context_id: str
    hit_tier: str | None
    codec: str | None
    ttft_s: float
    total_s: float
    wait_s: float  # queueing before service (arrivals that came while the engine was busy)
    quality: float | None  # estimated quality of the KV it used (1.0 for a full prefill)
    f1: float | None


@dataclass
class DemoSummary:
    requests: int = 0
    served: list[Served] = field(default_factory=list)
    tiers: list[dict] = field(default_factory=list)  # name, used_bytes, capacity_bytes
    codecs: dict[str, int] = field(default_factory=dict)  # codec -> contexts stored with it
    dropped: int = 0
    profiled_contexts: int = 0
    profile_units: int = 0
    reprofiles: int = 0
    first_request_s: float | None = None  # from run_demo's start to the first answer's first token
    startup_s: float = 0.0
    elapsed_s: float = 0.0

    @property
    def misses(self) -> int:
        return sum(1 for s in self.served if s.hit_tier is None)

    @property
    def hits_by_tier(self) -> dict[str, int]:
        return dict(Counter(s.hit_tier for s in self.served if s.hit_tier is not None))

    def ttft(self, which: str = "all") -> dict[str, float]:
        pick = {"all": lambda s: True, "hit": lambda s: s.hit_tier is not None, "miss": lambda s: s.hit_tier is None}
        xs = np.array([s.ttft_s for s in self.served if pick[which](s)])
        if xs.size == 0:
            return {}
        return {"mean": float(xs.mean()), "p50": float(np.percentile(xs, 50)), "p99": float(np.percentile(xs, 99)), "n": int(xs.size)}

    @property
    def mean_quality(self) -> float | None:
        qs = [s.quality for s in self.served if s.quality is not None]
        return float(np.mean(qs)) if qs else None

    @property
    def mean_f1(self) -> float | None:
        f1 = [s.f1 for s in self.served if s.f1 is not None]
        return float(np.mean(f1)) if f1 else None


def _tier_configs(device: str, gpu_bytes, cpu_bytes, disk_bytes, disk_dir: Path) -> tuple[TierConfig, ...]:
    tiers = []
    if device.startswith("cuda"):
        tiers.append(TierConfig("gpu", capacity_bytes=gpu_bytes or DEFAULT_GPU_BYTES))
    elif gpu_bytes:
        raise UsageError("--gpu-capacity needs a CUDA device; this run uses the CPU (tiers: cpu, disk)")
    tiers.append(TierConfig("cpu", capacity_bytes=cpu_bytes or DEFAULT_CPU_BYTES))
    tiers.append(TierConfig("disk", capacity_bytes=disk_bytes or DEFAULT_DISK_BYTES, path=disk_dir))
    return tuple(tiers)


def _resolve_device(device: str | None) -> str:
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"device {device!r} asked for, but no CUDA device is available; use --device cpu")
    if device != "cpu" and not device.startswith("cuda"):
        raise UsageError(f"unknown device {device!r}; valid: cpu, cuda, cuda:N")
    return device


def _quiet_libraries(log_file: Path | None) -> None:
    """Library progress bars and warnings would garble the dashboard and the progress bar."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_file)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        root = logging.getLogger()
        root.addHandler(handler)
        root.setLevel(logging.INFO)


class DemoRun:
    """The serving loop: arrivals, answers, idle-time profiling, stats. Thread-agnostic."""

    def __init__(self, engine, profiler, contexts, workload, max_new_tokens: int, started_at: float,
                 duration_s: float | None) -> None:  # fmt: skip
        self.engine, self.profiler = engine, profiler
        self.contexts = {c.id: c for c in contexts}
        self.workload = workload
        self.max_new_tokens = max_new_tokens
        self.started_at = started_at
        self.duration_s = duration_s
        self.stop = threading.Event()
        self.summary = DemoSummary()
        self.on_served = None  # callback(Served), e.g. the progress bar
        self._last_idle = time.monotonic()
        self._last_stale_check = 0.0

    def run(self) -> DemoSummary:
        t0 = None
        for request in self.workload:
            if t0 is None:  # the first request arrives as soon as we are ready
                t0 = time.monotonic() - request.at_s
            if not self._wait_until(t0 + request.at_s):
                break
            self._serve(request, time.monotonic() - (t0 + request.at_s))
            if self.stop.is_set() or self._out_of_time():
                break
        return self.summary

    def _out_of_time(self) -> bool:
        return self.duration_s is not None and time.monotonic() - self.started_at >= self.duration_s

    def _wait_until(self, due: float) -> bool:
        """Profile (one unit at a time) or sleep until `due`; False if asked to stop."""
        if time.monotonic() >= due and time.monotonic() - self._last_idle > STARVED_S:
            self.profiler.step()  # no idle time for a while: profiles must still progress
            self._last_idle = time.monotonic()
        while time.monotonic() < due:
            self._last_idle = time.monotonic()
            if self.stop.is_set() or self._out_of_time():
                return False
            if self.profiler.step():
                continue
            if time.monotonic() - self._last_stale_check > STALE_CHECK_S:
                self._last_stale_check = time.monotonic()
                if self.profiler.reprofile_stale():
                    continue
            self.stop.wait(min(0.05, max(0.0, due - time.monotonic())))
        return not self.stop.is_set()

    def _serve(self, request, wait_s: float) -> None:
        from evicctl.engine.quality import token_f1

        ctx, qa = request.context, request.qa
        request_at = time.monotonic()
        answer = self.engine.answer(ctx.id, ctx.text, qa.question, self.max_new_tokens, label=ctx.label,
                                    keep_logprobs=True)  # fmt: skip
        if answer.hit:
            est = self.profiler.estimate(ctx.id, answer.codec) if answer.codec != "none" else None
            quality = 1.0 if answer.codec == "none" else (est.quality if est else None)
            self.profiler.sample(ctx, qa, answer)
        else:
            quality = 1.0
            self.profiler.admitted(ctx, answer.full_kv)
        served = Served(request.index, ctx.id, answer.hit_tier, answer.codec, answer.ttft.first_token_s,
                        answer.ttft.total_s, max(0.0, wait_s), quality, token_f1(answer.text, qa.answers))  # fmt: skip
        if self.summary.first_request_s is None:
            self.summary.first_request_s = request_at - self.started_at + answer.ttft.first_token_s
        self.summary.served.append(served)
        log.info("request %d %s %s/%s ttft %.2fs: %r", request.index, ctx.id, answer.hit_tier or "miss",
                 answer.codec or "-", answer.ttft.first_token_s, answer.text)  # fmt: skip
        if self.on_served is not None:
            self.on_served(served)


def run_demo(
    headless: bool = False,
    duration_s: float | None = None,
    contexts: int = DEFAULT_CONTEXTS,
    requests: int | None = None,
    seed: int = 0,
    db_path: Path | str | None = None,
    cache_dir: Path | str | None = None,
    device: str | None = None,
    gpu_capacity_bytes: int | None = None,
    cpu_capacity_bytes: int | None = None,
    disk_capacity_bytes: int | None = None,
    *,
    rate_rps: float = DEFAULT_RATE_RPS,
    zipf: float = DEFAULT_ZIPF,
    trace: Path | str | None = None,
    target_tokens: int = 1024,
    max_new_tokens: int = 24,
    profile_questions: int = 3,
    metric: str = "teacher-forced",
    metrics_port: int | None = DEFAULT_METRICS_PORT,
    kvzip: bool = False,
    console=None,
) -> DemoSummary:
    """Run the demo; returns (and, headless, prints) the summary. See the module docstring."""
    from rich.console import Console

    started_at = time.monotonic()
    console = console or Console(stderr=False)
    if contexts < 1:
        raise UsageError(f"--contexts must be at least 1; got {contexts}")
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    db_path = Path(db_path) if db_path else default_db_path()
    interactive = not headless and sys.stdin.isatty() and sys.stdout.isatty()
    if not headless and not interactive:
        console.print("not a terminal: running headless")
    if headless and requests is None and duration_s is None and trace is None:
        requests = HEADLESS_REQUESTS_PER_CONTEXT * contexts
    device = _resolve_device(device)
    _quiet_libraries(cache_dir / "demo.log" if interactive else None)
    config = ManagerConfig(
        db_path=db_path, cache_dir=cache_dir, device=device, codecs=DEFAULT_CODECS, metrics_port=metrics_port,
        tiers=_tier_configs(device, gpu_capacity_bytes, cpu_capacity_bytes, disk_capacity_bytes,
                            per_store_disk_dir(db_path, cache_dir)),
    )  # fmt: skip
    manager = _start_manager(config, console)
    try:
        setup = _Setup(console, manager, cache_dir, device, contexts, requests, duration_s, seed, rate_rps, zipf,
                       trace, target_tokens, profile_questions, metric, max_new_tokens, started_at,
                       kvzip=kvzip)  # fmt: skip
        summary = _run_with_dashboard(setup, db_path) if interactive else _run_headless(setup)
        _finish(summary, manager, setup, started_at)
    finally:
        manager.close()
    print_summary(summary, console)
    return summary


def _start_manager(config: ManagerConfig, console):
    """Start the manager and say where its metrics are served; a busy metrics port falls back
    to any free one (said on the console), since the demo should not fail over telemetry."""
    import dataclasses

    from evicctl.manager.manager import Manager
    from evicctl.manager.metrics import MetricsServerError

    try:
        manager = Manager(config)
    except MetricsServerError as exc:
        console.print(f"{exc}; serving metrics on a free port instead", markup=False, highlight=False)
        manager = Manager(dataclasses.replace(config, metrics_port=0))
    if manager.metrics_url:
        console.print(f"metrics: {manager.metrics_url}  (curl it; Prometheus can scrape it)", markup=False,
                      highlight=False)  # fmt: skip
    return manager.start()


@dataclass
class _Setup:
    console: object
    manager: object
    cache_dir: Path
    device: str
    contexts: int
    requests: int | None
    duration_s: float | None
    seed: int
    rate_rps: float
    zipf: float
    trace: Path | str | None
    target_tokens: int
    profile_questions: int
    metric: str
    max_new_tokens: int
    started_at: float
    profiler: object = None
    kvzip: bool = False  # the engine (and profiler) compute KVzip scores when storing a context

    def build(self, status=None) -> DemoRun:
        """Load the model and data, wire engine + profiler + workload (the slow part)."""
        from evicctl.engine.data import load_contexts
        from evicctl.engine.engine import Engine
        from evicctl.engine.model import load_model_with_report
        from evicctl.engine.priors import default_priors
        from evicctl.engine.profiler import Profiler, ProfilerSettings, read_stored_profiles
        from evicctl.engine.workload import replay_csv, zipf_poisson

        say = status or (lambda text: None)
        say("loading the model (the first run converts the GGUF once, ~20-30 s)")
        model, tokenizer, report = load_model_with_report(self.cache_dir, self.device)
        log.info("model loaded from %s in %.1f s", report.source, report.load_s)
        say("loading contexts")
        chosen = load_contexts(tokenizer, self.contexts, target_tokens=self.target_tokens, seed=self.seed)
        settings = ProfilerSettings(metric=self.metric, questions=self.profile_questions,
                                    max_new_tokens=self.max_new_tokens, seed=self.seed, kvzip=self.kvzip)  # fmt: skip
        self.profiler = Profiler(self.manager, model, tokenizer, self.manager.codec_names, settings,
                                 priors=default_priors(self.metric), device=self.device)  # fmt: skip
        self.profiler.load_stored(read_stored_profiles(self.manager.config.db_path))
        for ctx in chosen:  # known from an earlier run (a restart): profile when idle if never profiled
            if self.manager.known(ctx.id):
                self.profiler.known[ctx.id] = ctx
                if not self.profiler.is_profiled(ctx.id):
                    self.profiler.enqueue(ctx)
        if self.trace:
            workload = replay_csv(self.trace, chosen, exponent=self.zipf, seed=self.seed)
        else:
            workload = zipf_poisson(chosen, rate_rps=self.rate_rps, exponent=self.zipf, requests=self.requests,
                                    duration_s=None, seed=self.seed)  # fmt: skip
        if self.trace and self.requests:
            workload = (r for r in workload if r.index < self.requests)
        engine = Engine(self.manager, model, tokenizer, self.device, kvzip=self.kvzip)
        return DemoRun(engine, self.profiler, chosen, workload, self.max_new_tokens, self.started_at, self.duration_s)


def _run_headless(setup: _Setup) -> DemoSummary:
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    console = setup.console
    # Without a terminal, rich draws neither the spinner nor the bar: a plain line every
    # PLAIN_PROGRESS_S keeps a log (CI, `| tee`) showing that the run is alive and where.
    plain = None if console.is_terminal else PlainProgress(console, PLAIN_PROGRESS_S)
    with console.status("starting") as status:
        def starting(text: str) -> None:
            status.update(text)
            if plain:
                plain.update(f"starting: {text}")

        run = setup.build(starting)
    total = setup.requests if setup.requests is not None else None
    columns = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TimeElapsedColumn(), TextColumn("{task.fields[stats]}")]  # fmt: skip
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("serving", total=total, stats="waiting for the first request")

        def on_served(served: Served) -> None:
            s = run.summary
            where = served.hit_tier and f"{served.hit_tier}/{served.codec}" or "miss"
            stats = (f"hits {len(s.served) - s.misses} misses {s.misses} | last {where} "
                     f"ttft {served.ttft_s:.2f}s | profiling queue {run.profiler.pending}")  # fmt: skip
            progress.update(task, advance=1, stats=stats)
            if plain:
                plain.update(f"served {len(s.served)}{'/' + str(total) if total else ''} | {stats}")

        run.on_served = on_served
        try:
            run.run()
        except KeyboardInterrupt:
            console.print("interrupted: summarising")
        finally:
            if plain:
                plain.stop()
    return run.summary


class PlainProgress:
    """Prints the latest status as one plain line every `every_s` seconds from a thread."""

    def __init__(self, console, every_s: float) -> None:
        self._console, self._every_s = console, every_s
        self._status, self._started = "starting", time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="demo-progress", daemon=True)
        self._thread.start()

    def update(self, status: str) -> None:
        self._status = status

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1.0)

    def _loop(self) -> None:
        while not self._stop.wait(self._every_s):
            elapsed_s = time.monotonic() - self._started
            self._console.print(f"[{elapsed_s:5.0f} s] {self._status}", markup=False, highlight=False, soft_wrap=True)


def _run_with_dashboard(setup: _Setup, db_path: Path) -> DemoSummary:
    """Load first (errors surface before the screen changes), then serve from a worker
    thread while the dashboard owns the terminal until the user quits."""
    from evicctl.tui.app import run_top

    with setup.console.status("starting") as status:
        run = setup.build(lambda text: status.update(text))
    failed: list[BaseException] = []

    def work() -> None:
        try:
            run.run()
        except BaseException as exc:  # reported after the dashboard closes
            failed.append(exc)
            log.exception("demo workload failed")

    worker = threading.Thread(target=work, name="evicctl-demo", daemon=True)
    worker.start()
    try:
        run_top(db_path, interval_s=1.0)
    finally:
        run.stop.set()
        worker.join(timeout=60)
    if failed:
        raise failed[0]
    return run.summary


def _finish(summary: DemoSummary, manager, setup: _Setup, started_at: float) -> None:
    summary.requests = len(summary.served)
    summary.elapsed_s = time.monotonic() - started_at
    summary.tiers = [{"name": t.name, "used_bytes": t.used_bytes, "capacity_bytes": t.capacity_bytes} for t in manager.tiers]
    codecs: Counter = Counter()
    for ctx_id in manager.context_ids():
        placement = manager.placement(ctx_id)
        if placement is None:
            continue
        if placement.tier == "dropped":
            summary.dropped += 1
        else:
            codecs[placement.codec] += 1
    summary.codecs = dict(codecs)
    prof = setup.profiler
    if prof is not None:
        summary.profiled_contexts = sum(1 for c in prof.known if prof.is_profiled(c))
        summary.profile_units = prof.units_done
        summary.reprofiles = prof.reprofiles


def _mib(n: int) -> str:
    return f"{n / (1 << 20):,.1f} MiB"


def print_summary(summary: DemoSummary, console) -> None:
    from rich.table import Table

    table = Table(title="evicctl demo summary", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("requests", str(summary.requests))
    for tier, n in sorted(summary.hits_by_tier.items()):
        table.add_row(f"hits from {tier}", str(n))
    table.add_row("misses (full prefill)", str(summary.misses))
    for which in ("all", "hit", "miss"):
        t = summary.ttft(which)
        if t:
            table.add_row(f"TTFT {which} mean / p50 / p99", f"{t['mean']:.2f} / {t['p50']:.2f} / {t['p99']:.2f} s (n={t['n']})")
    if summary.mean_quality is not None:
        table.add_row("mean quality of the KV used", f"{summary.mean_quality:.3f}")
    if summary.mean_f1 is not None:
        table.add_row("mean token F1 vs gold", f"{summary.mean_f1:.3f}")
    for tier in summary.tiers:
        table.add_row(f"bytes in {tier['name']}", f"{_mib(tier['used_bytes'])} of {_mib(tier['capacity_bytes'])}")
    for codec, n in sorted(summary.codecs.items(), key=lambda kv: -kv[1]):
        table.add_row(f"contexts at {codec}", str(n))
    if summary.dropped:
        table.add_row("contexts dropped", str(summary.dropped))
    table.add_row("contexts profiled / profiling units / re-profiles",
                  f"{summary.profiled_contexts} / {summary.profile_units} / {summary.reprofiles}")
    if summary.first_request_s is not None:
        table.add_row("first token of the first request after start", f"{summary.first_request_s:.1f} s")
    table.add_row("elapsed", f"{summary.elapsed_s:.1f} s")
    console.print(table)
