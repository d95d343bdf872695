"""Policy replay and benchmarks (`evicctl bench`). Importing this package imports nothing heavy."""

from __future__ import annotations


def run_bench(**options) -> dict:
    """Run `evicctl bench` (see evicctl.bench.run.BenchOptions for the options)."""
    from evicctl.bench.run import run_bench as _run

    return _run(**options)


__all__ = ["run_bench"]
