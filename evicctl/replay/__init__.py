"""Policy replay and benchmarks (`evicctl bench`). Importing this package imports nothing heavy."""

from __future__ import annotations


def run_bench(**options) -> dict:
    """Run `evicctl bench` (see evicctl.replay.run.BenchOptions for the options)."""
    from evicctl.replay.bench import run_bench as _run

    return _run(**options)


__all__ = ["run_bench"]
