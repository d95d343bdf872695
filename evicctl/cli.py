"""The `evicctl` command: a thin Typer layer over the library. It parses, calls, prints.

Exit codes (DESIGN §7, evicctl/errors.py): 0 ok, 1 error, 2 usage, 3 no such context,
4 no manager running or timed out waiting for it, 5 refused by the manager.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from evicctl.console import mutate as cli_mutate
from evicctl.console import read as cli_read
from evicctl.console.common import (
    DbOpt,
    EvicctlGroup,
    OutputOpt,
    db_path,
    lazy_attr,
    open_reader,
)
from evicctl.console.fleet import fleet_app, fleet_argv
from evicctl.console.output import OutputFormat, console, stdout_is_terminal
from evicctl.engine import demo_defaults as DEMO  # noqa: N812
from evicctl.errors import UsageError
from evicctl.timeparse import format_size

app = typer.Typer(
    cls=EvicctlGroup,
    name="evicctl",
    help="Inspect and steer the evicctl KV-cache manager: where each context's KV lives and how it is compressed.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        from evicctl import __version__

        sys.stdout.write(f"evicctl {__version__}\n")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")] = False,
) -> None:
    """Inspect and steer the evicctl KV-cache manager."""


cli_read.register(app)
cli_mutate.register(app)
app.add_typer(fleet_app, name="fleet")  # also reached as `--fleet URL` (see main)

MIN_INTERVAL_S = 0.25


@app.command()
def top(
    interval: Annotated[float, typer.Option(help=f"Seconds between refreshes (minimum {MIN_INTERVAL_S}).")] = 1.0,
    once: Annotated[bool, typer.Option("--once", help="Print one snapshot and exit (works without a terminal).")] = False,
    readonly: Annotated[bool, typer.Option("--readonly", help="Hide and refuse the pin/evict/recompress actions.")] = False,
    sort: Annotated[str, typer.Option(help="Initial sort of the contexts table (utility|size|hits|age|quality ...); -KEY descending, +KEY ascending.")] = "utility",
    db: DbOpt = None,
) -> None:
    """The live dashboard: tiers, contexts, events and the manager's state."""
    if interval < MIN_INTERVAL_S:
        raise UsageError(f"--interval must be at least {MIN_INTERVAL_S} s; got {interval:g}")
    # the dashboard's own parser, so every spelling it accepts (-hits, +age, stored) is valid here
    parse_sort = lazy_attr("evicctl.tui.query", "parse_sort", "evicctl top")
    parse_sort(sort)
    path = db_path(db)
    open_reader(path).close()  # a missing or unreadable database is one clear line, here
    if once:
        render_once = lazy_attr("evicctl.tui.once", "render_once", "evicctl top --once")
        render_once(path, console(), sort)
        return
    if not (stdout_is_terminal() and sys.stdin.isatty()):
        raise UsageError("evicctl top needs a terminal; use --once for a one-shot view")
    run_top = lazy_attr("evicctl.tui.app", "run_top", "evicctl top")
    run_top(path, interval, readonly, sort)


def _given(**options) -> dict:
    """Only the options the user set: the implementation keeps its own defaults."""
    return {k: v for k, v in options.items() if v is not None}


@app.command()
def demo(
    headless: Annotated[bool, typer.Option("--headless", help="No dashboard: a progress bar and a summary table.")] = False,
    duration: Annotated[float | None, typer.Option(min=0.0, help="Seconds to run (default: until Ctrl-C; headless: until every context was asked 3 times, or --requests).")] = None,
    contexts: Annotated[int, typer.Option(min=1, help="Number of contexts in the workload.")] = DEMO.DEFAULT_CONTEXTS,
    requests: Annotated[int | None, typer.Option(min=1, help="Stop after N requests (default: no limit).")] = None,
    seed: Annotated[int, typer.Option(help="Workload seed.")] = 0,
    gpu_capacity: Annotated[str | None, typer.Option(help=f"GPU tier capacity, e.g. 2GiB (default: {format_size(DEMO.DEFAULT_GPU_BYTES)}; only with a CUDA device).")] = None,
    cpu_capacity: Annotated[str, typer.Option(help="CPU tier capacity, e.g. 256MiB, 2GiB.")] = format_size(DEMO.DEFAULT_CPU_BYTES),
    disk_capacity: Annotated[str, typer.Option(help="Disk tier capacity, e.g. 256MiB, 2GiB.")] = format_size(DEMO.DEFAULT_DISK_BYTES),
    cache_dir: Annotated[Path | None, typer.Option(help="Model and disk-tier cache (default: $XDG_CACHE_HOME/evicctl).", file_okay=False)] = None,
    device: Annotated[str | None, typer.Option(help="cpu or cuda (default: cuda when available).")] = None,
    metrics_port: Annotated[int | None, typer.Option(min=0, max=65535, help=f"Serve Prometheus /metrics on 127.0.0.1:PORT (default: {DEMO.DEFAULT_METRICS_PORT}; 0: any free port).")] = None,
    kvzip: Annotated[bool, typer.Option("--kvzip", help="Also compute KVzip scores when storing a context (about 2-3 prefills more per miss), so the kvzip codecs can be chosen.")] = False,
    db: DbOpt = None,
) -> None:
    """Run an embedded engine, workload and manager (the store others can watch with evicctl top)."""
    from evicctl.timeparse import parse_size_bytes

    capacities = {
        f"{name}_capacity_bytes": parse_size_bytes(text)
        for name, text in (("gpu", gpu_capacity), ("cpu", cpu_capacity), ("disk", disk_capacity))
        if text is not None
    }
    run_demo = lazy_attr("evicctl.engine.demo", "run_demo", "evicctl demo")
    options = _given(duration_s=duration, contexts=contexts, requests=requests, seed=seed, cache_dir=cache_dir, device=device)
    options |= _given(metrics_port=metrics_port) | ({"kvzip": True} if kvzip else {})
    run_demo(headless=headless, db_path=db_path(db), **options, **capacities)


@app.command()
def bench(
    scenario: Annotated[str | None, typer.Option(help="cpu-local (this machine, measured) or h200.")] = None,
    policy: Annotated[list[str] | None, typer.Option("--policy", "-p", help="prefill, lru, fixed:<codec>, arc, gdsf, tinylfu (each also name:<codec>), best-fixed, ideal, evicpress, evicpress@<alpha>, exact, placement-only; repeat (default: all).")] = None,
    trace: Annotated[Path | None, typer.Option(help="Replay arrival times from a CSV file.", exists=True, dir_okay=False)] = None,
    contexts: Annotated[int | None, typer.Option(min=1, help="Number of contexts.")] = None,
    requests: Annotated[int | None, typer.Option(min=1, help="Number of requests.")] = None,
    qps: Annotated[float | None, typer.Option(min=0.0, help="Poisson arrival rate (requests/s).")] = None,
    zipf: Annotated[float | None, typer.Option(min=0.0, help="Zipf exponent of context popularity.")] = None,
    seed: Annotated[int | None, typer.Option(help="Workload seed.")] = None,
    live: Annotated[bool, typer.Option("--live", help="Serve with the real engine and model instead of replaying costs.")] = False,
    plot: Annotated[Path | None, typer.Option(help="Write TTFT vs quality per policy to this PNG.", dir_okay=False)] = None,
    sweep: Annotated[str | None, typer.Option(help="Robustness sweep: zipf, disk, capacity, drift, noise or half-life.")] = None,
    capacity: Annotated[float | None, typer.Option(min=0.0, help="All tiers together, as a fraction of the workload's raw KV.")] = None,
    drift: Annotated[float | None, typer.Option(min=0.0, help="Popularity drift over the run.")] = None,
    profile_noise: Annotated[float | None, typer.Option(min=0.0, help="Noise added to the quality profiles the placer sees.")] = None,
    disk_bps: Annotated[float | None, typer.Option(min=0.0, help="Disk read bandwidth override (bytes/s).")] = None,
    alpha: Annotated[float | None, typer.Option(min=0.0, help="Seconds of TTFT one unit of quality is worth.")] = None,
    warmup: Annotated[float | None, typer.Option(min=0.0, max=0.99, help="Fraction of requests not counted (warm-up).")] = None,
    profiles: Annotated[Path | None, typer.Option(help="Quality profiles file (JSON) to replay with.", dir_okay=False)] = None,
    quality_target: Annotated[float | None, typer.Option(min=0.0, max=1.0, help="Mean quality at which policies are compared (default: 0.97).")] = None,
    slo_p99_s: Annotated[float | None, typer.Option(min=0.0, help="p99 TTFT target of the max-QPS table (default: 2x an unloaded full prefill's p99).")] = None,
    freq_estimator: Annotated[str | None, typer.Option(help="Access-rate estimator of the placer policies: learned or single (default: learned).")] = None,
    throughput: Annotated[bool, typer.Option("--throughput/--no-throughput", help="Queueing: TTFT with waiting and max QPS per policy.")] = True,
    output: OutputOpt = OutputFormat.table,
) -> None:
    """Replay a workload under several policies and compare TTFT and quality."""
    run_bench = lazy_attr("evicctl.replay", "run_bench", "evicctl bench")
    options = _given(scenario=scenario, policies=tuple(policy) if policy else None, trace=trace, contexts=contexts,
                     requests=requests, qps=qps, zipf=zipf, seed=seed, plot=plot, sweep=sweep, capacity=capacity,
                     drift=drift, profile_noise=profile_noise, disk_bps=disk_bps, alpha=alpha, warmup=warmup,
                     profiles=profiles, quality_target=quality_target, slo_p99_s=slo_p99_s,
                     freq_estimator=freq_estimator)
    if not throughput:
        options["throughput"] = False
    run_bench(live=live, output=output.value, **options)


def main(argv: list[str] | None = None) -> None:
    """Console entry point (`evicctl`)."""
    app(args=fleet_argv(sys.argv[1:] if argv is None else argv), prog_name="evicctl")


if __name__ == "__main__":
    main()
