"""Does scraping /metrics slow the placement tick? Tick time with and without a scrape loop.

One real manager (cpu and disk tiers, real store, metrics on a free port) holds --contexts
small contexts from several tenants. The bench drives its control step itself
(`manager.tick()` with a re-plan forced each time: pricing + placement of every context and
the state write), in alternating blocks: no scraper, then a thread that GETs /metrics every
--scrape-s seconds (1 s: a Prometheus scraping 15x faster than its usual 15 s), then a
stress scraper (--stress-s). Blocks interleave so that machine noise (2 shared cores here)
falls on every condition alike; the ratios come from the same run. A manager with metrics
off (the no-op recorder) runs the same ticks for the hooks' own cost.

    .venv/bin/python -P benchmarks/metrics_bench.py [--contexts 1000] [--blocks 15] [--block-s 1]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from evicctl.config import ManagerConfig, TierConfig
from evicctl.manager.kv import KV
from evicctl.manager.manager import Manager

LAYERS, HEADS, TOKENS, HEAD_DIM = 2, 2, 16, 16
KV_BYTES = 2 * LAYERS * HEADS * TOKENS * HEAD_DIM * 4  # fp32: 8 KiB a context


def small_kv(seed: int) -> KV:
    g = torch.Generator().manual_seed(seed)
    keys = [torch.randn(1, HEADS, TOKENS, HEAD_DIM, generator=g) for _ in range(LAYERS)]
    return KV.full(keys, [k.clone() for k in keys])


def build(root: Path, contexts: int, metrics_port: int | None) -> Manager:
    """A manager whose cpu tier holds a third of the contexts (the rest on disk, some dropped)."""
    config = ManagerConfig(
        db_path=root / "evicctl.db", cache_dir=root / "cache", codecs=("none", "int8", "int4"),
        tiers=(TierConfig("cpu", capacity_bytes=contexts * KV_BYTES // 3),
               TierConfig("disk", capacity_bytes=contexts * KV_BYTES // 2)),
        metrics_port=metrics_port, replan_s=3600.0,
    )  # fmt: skip
    manager = Manager(config, probe=False)
    for i in range(contexts):
        manager.store(f"ctx-{i:05d}", small_kv(i), prefill_s=0.5, tenant=f"tenant-{i % 8}")
        if i % 3 == 0:
            manager.lookup(f"ctx-{i:05d}")
    return manager


def tick_times(manager: Manager, seconds: float) -> list[float]:
    """Wall time of forced re-plan ticks for `seconds`."""
    times, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end:
        manager.rt.replan_needed = True
        start = time.perf_counter()
        manager.tick()
        times.append(time.perf_counter() - start)
    return times


class Scraper:
    """GET url every period_s in a thread; keeps each scrape's wall time."""

    def __init__(self, url: str, period_s: float) -> None:
        self.url, self.period_s, self.scrape_s = url, period_s, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Scraper:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.is_set():
            start = time.perf_counter()
            with urllib.request.urlopen(self.url, timeout=30) as response:
                response.read()
            self.scrape_s.append(time.perf_counter() - start)
            self._stop.wait(max(0.0, self.period_s - (time.perf_counter() - start)))


def run(args) -> Table:
    with tempfile.TemporaryDirectory() as tmp:
        served = build(Path(tmp) / "on", args.contexts, metrics_port=0)
        off = build(Path(tmp) / "off", args.contexts, metrics_port=None)
        try:
            ticks = {"metrics off": [], "on, no scrape": [], f"on, scrape every {args.scrape_s:g} s": [],
                     f"on, scrape every {args.stress_s:g} s": []}  # fmt: skip
            scrapes: dict[str, list[float]] = {name: [] for name in ticks}
            periods = dict(zip(list(ticks)[2:], (args.scrape_s, args.stress_s), strict=True))
            for _ in range(args.blocks):
                ticks["metrics off"] += tick_times(off, args.block_s)
                ticks["on, no scrape"] += tick_times(served, args.block_s)
                for name, period in periods.items():
                    with Scraper(served.metrics_url, period) as scraper:
                        ticks[name] += tick_times(served, args.block_s)
                    scrapes[name] += scraper.scrape_s
            size = len(urllib.request.urlopen(served.metrics_url).read())
        finally:
            served.close()
            off.close()
    return table(ticks, scrapes, args, size)


def table(ticks: dict, scrapes: dict, args, size: int) -> Table:
    base = statistics.median(ticks["on, no scrape"])
    out = Table(title=f"placement tick, {args.contexts:,} contexts, {args.blocks} interleaved blocks of "
                      f"{args.block_s:g} s per condition; /metrics body {size / 1024:.0f} KiB")  # fmt: skip
    for col in ("condition", "ticks", "tick p50 ms", "tick p90 ms", "mean ms", "p50 vs no scrape", "scrapes",
                "scrape p50 ms"):  # fmt: skip
        out.add_column(col, justify="left" if col == "condition" else "right")
    for name, xs in ticks.items():
        xs_ms = sorted(x * 1e3 for x in xs)
        s = scrapes[name]
        out.add_row(name, str(len(xs)), f"{statistics.median(xs_ms):.2f}", f"{xs_ms[int(0.9 * (len(xs_ms) - 1))]:.2f}",
                    f"{statistics.fmean(xs_ms):.2f}", f"{statistics.median(xs) / base:.3f}", str(len(s)),
                    f"{statistics.median(s) * 1e3:.1f}" if s else "-")  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", type=int, default=1000)
    parser.add_argument("--blocks", type=int, default=15)
    parser.add_argument("--block-s", type=float, default=1.0)
    parser.add_argument("--scrape-s", type=float, default=1.0)
    parser.add_argument("--stress-s", type=float, default=0.1)
    args = parser.parse_args()
    Console(width=160).print(run(args))


if __name__ == "__main__":
    main()
