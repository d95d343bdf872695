"""`evicctl bench`: pick the mode (replay, live, sweep), run it, print and plot the result."""

from __future__ import annotations

from evicctl.replay.run import WIDE, BenchOptions, options_from, replay_all


def run_bench(**options) -> dict:
    """Entry point of `evicctl bench` (see BenchOptions for the options and their names).

    Prints a table (or JSON with output="json") to stdout, writes the plot if asked, and
    returns the JSON-ready document. Raises UsageError for bad options.
    """
    from rich.console import Console

    console = options.pop("console", None) or Console()
    if not console.is_terminal and console.width < WIDE:  # piped: do not wrap the tables at 80 columns
        console = Console(file=console.file, width=WIDE)
    progress = options.pop("progress", None)
    opts = options_from(**options)
    err = Console(stderr=True)
    show = err.is_terminal if progress is None else bool(progress)
    if opts.sweep:
        from evicctl.replay.robustness import run_sweep

        doc = run_sweep(opts, console=err, show_progress=show)
    elif opts.live:
        from evicctl.replay.live import run_live

        doc = run_live(opts, console=err, show_progress=show)
    else:
        doc = replay_all(opts, console=err, show_progress=show)
    if opts.plot is not None and opts.sweep:
        from evicctl.replay.plot import plot_sweep

        plot_sweep(doc, opts.plot)
        doc.setdefault("notes", []).append(f"plot written to {opts.plot}")
    elif opts.plot is not None and doc.get("runs"):
        from evicctl.replay.plot import plot_runs

        plot_runs(doc["runs"], opts.plot, title=f"{opts.scenario}: TTFT vs quality")
        doc.setdefault("notes", []).append(f"plot written to {opts.plot}")
    _emit(doc, opts, console)
    return doc


def _emit(doc: dict, opts: BenchOptions, console) -> None:
    from evicctl.replay.report import print_report, to_csv, to_json, to_jsonl

    if opts.output != "table":
        render = {"json": to_json, "jsonl": to_jsonl, "csv": to_csv}[opts.output]
        print(render(doc), file=console.file)
        return
    if opts.sweep:
        from evicctl.replay.robustness import print_sweep

        print_sweep(doc, console)
        return
    print_report(doc, console)
