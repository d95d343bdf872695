"""`python -m evicctl.replay`: the same options as `evicctl bench`, without the CLI package."""

from __future__ import annotations

import argparse
import sys

from evicctl.errors import EvicctlError


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m evicctl.replay", description="Replay workloads and compare placement policies.")
    p.add_argument("--scenario", default="cpu-local", help="cpu-local | h200")
    p.add_argument("--policy", action="append", help="repeatable; default: every policy")
    p.add_argument("--contexts", type=int)
    p.add_argument("--requests", type=int)
    p.add_argument("--qps", type=float)
    p.add_argument("--zipf", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--live", action="store_true", default=None)
    p.add_argument("--live-open-loop", action="store_true", default=None,
                   help="live: requests arrive at --qps on the clock and wait behind each other (checks the queueing model)")
    p.add_argument("-o", "--output", choices=("table", "json"))
    p.add_argument("--plot")
    p.add_argument("--trace")
    p.add_argument("--sweep", help="zipf | disk | capacity | drift | noise | half-life")
    p.add_argument("--capacity", type=float, help="all tiers together, as a fraction of the workload's raw KV")
    p.add_argument("--drift", type=float)
    p.add_argument("--profile-noise", type=float)
    p.add_argument("--disk-bps", type=float)
    p.add_argument("--alpha", type=float)
    p.add_argument("--half-life-s", type=float, help="access-rate half-life of the placer policies (default 300, the manager's)")
    p.add_argument("--jobs", type=int, help="worker processes (default: one per core, at most 2)")
    p.add_argument("--freq-estimator", choices=("learned", "single"),
                   help="placer access rates: learned half-life with a count prior (default) or the old single decayed rate")
    p.add_argument("--quality-target", type=float, help="mean quality the baselines are compared at and `ideal` serves at (default 0.97)")
    p.add_argument("--slo-p99-s", type=float, help="p99 TTFT target of the max-QPS table (default: 2x an unloaded full prefill's p99)")
    p.add_argument("--profiles", help="quality profiles JSON (default: the shipped SmolLM2 measurements)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = vars(parser().parse_args(argv))
    from evicctl.replay import run_bench

    try:
        run_bench(**args)
    except EvicctlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    from evicctl.entry import keep_checkout_root_off_path

    keep_checkout_root_off_path()
    sys.exit(main())
