"""Faults, load and hostile input on real processes (issue 14): prints the figures table.

    .venv/bin/python -P benchmarks/faults.py --crashes 100 --fuzz 10000
    .venv/bin/python -P benchmarks/faults.py --crashes 10 --fuzz 500 --only crash,hostile   # quick

Sections (--only, comma-separated): crash, hostile, env, load (then kill -9 at that size,
timed restarts), scale (memory at --scale-contexts). Every section works in its own
temporary folder; `--lock-s` is how long another writer holds the database (30 by default).
A row's "lost" counts what should have survived and did not (contexts, commands, or checks
that failed); the problems behind every nonzero count are printed under the table.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ (never the checkout root: -P)

import faults_env  # noqa: E402
import faults_hostile  # noqa: E402
import faults_load  # noqa: E402
import faults_scale  # noqa: E402
from faults_common import Figure, dump  # noqa: E402
from faults_crash import CrashHarness  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("crash", "hostile", "env", "load", "scale")


def machine() -> str:
    import os

    return f"{platform.node()}: {os.cpu_count()} cores, {platform.machine()}, Linux {platform.release()}, Python {platform.python_version()}"


def commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True)
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def section(name: str, args, tmp: Path) -> list[tuple[Figure, list[str]]]:
    """Run one section in its own folder; returns (figure, problems) rows."""
    folder = tmp / name
    folder.mkdir()
    if name == "crash":
        harness = CrashHarness(folder, seed=args.seed)
        return [(harness.run(args.crashes), harness.problems)]
    if name == "hostile":
        return [fn(folder / fn.__name__) for fn in (
            lambda f: faults_hostile.fuzz_cli(_mk(f), args.fuzz, args.seed),
            lambda f: faults_hostile.malformed_commands(_mk(f), rounds=args.malformed_rounds),
            lambda f: faults_hostile.hostile_ids(_mk(f)),
            lambda f: faults_hostile.planted_symlinks(_mk(f)),
        )]  # fmt: skip
    if name == "env":
        return [
            faults_env.filesystem_full(_mk(folder / "full")),
            faults_env.readonly_folder(_mk(folder / "ro")),
            faults_env.tampered_files(_mk(folder / "tamper")),
            faults_env.database_locked(_mk(folder / "locked"), hold_s=args.lock_s),
            faults_env.clock_backwards(_mk(folder / "clock")),
            faults_load.pinned_reader_wal(_mk(folder / "wal"), seconds=args.wal_s),
        ]
    if name == "scale":
        return [faults_scale.rss_at_scale(_mk(folder / "rss"), args.scale_contexts, seconds=args.scale_s)]
    root = _mk(folder / "load")
    figure, wal, problems = faults_load.run_load(root, args.load_contexts, args.operators, args.load_commands,
                                                 deadline_s=args.load_deadline_s)  # fmt: skip
    rows = [(figure, problems), (wal, [])]
    if args.recover_kills:  # on the state the load run left: kill -9 during a replay, timed restarts
        rows.append(faults_scale.recovery_at_scale(root, args.load_contexts, kills=args.recover_kills, seed=args.seed))
    return rows


def _mk(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def table(rows: list[tuple[Figure, list[str]]]) -> str:
    lines = ["| fault | injected | count | lost | recovery | notes |", "|---|---|---|---|---|---|"]
    for fig, _ in rows:
        lines.append(f"| {fig.fault} | {fig.injected} | {fig.count:,} | {fig.lost} | {fig.recovery_text()} | "
                     f"{'; '.join(fig.notes)} |")  # fmt: skip
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--crashes", type=int, default=100, help="kill -9 cycles (>= 100 for the issue's figure)")
    ap.add_argument("--fuzz", type=int, default=10_000, help="fuzzed CLI argument vectors")
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {', '.join(SECTIONS)}")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--malformed-rounds", type=int, default=5)
    ap.add_argument("--lock-s", type=float, default=30.0, help="seconds another writer holds the database")
    ap.add_argument("--wal-s", type=float, default=20.0, help="seconds a reader holds one transaction open")
    ap.add_argument("--load-contexts", type=int, default=10_000)
    ap.add_argument("--operators", type=int, default=8)
    ap.add_argument("--load-commands", type=int, default=1000, help="commands per operator process")
    ap.add_argument("--load-deadline-s", type=float, default=1800.0, help="no load command starts after this")
    ap.add_argument("--recover-kills", type=int, default=3, help="kill -9 of the loaded manager, each restart timed")
    ap.add_argument("--scale-contexts", type=int, default=100_000, help="contexts for the memory figure")
    ap.add_argument("--scale-s", type=float, default=60.0, help="seconds of replay before RSS is read")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    only = [s for s in args.only.split(",") if s]
    unknown = set(only) - set(SECTIONS)
    if unknown:
        ap.error(f"unknown section(s) {', '.join(sorted(unknown))}; valid: {', '.join(SECTIONS)}")
    rows: list[tuple[Figure, list[str]]] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="evicctl-faults-") as tmp:
        for name in only:
            t0 = time.monotonic()
            done = section(name, args, Path(tmp))
            rows += done
            # each section's rows as soon as it ends: a long run stopped later keeps them
            print(f"[{name}: {time.monotonic() - t0:.0f} s]\n{table(done)}", file=sys.stderr, flush=True)
    meta = {"commit": commit(), "machine": machine(), "command": " ".join(sys.argv), "seconds": time.monotonic() - started}
    print(f"commit {meta['commit']} on {meta['machine']}; {meta['seconds']:.0f} s; {meta['command']}\n")
    print(table(rows))
    problems = [p for _, ps in rows for p in ps]
    if problems:
        print(f"\n{len(problems)} problem(s):")
        print("\n".join(f"- {p}" for p in problems[:60]))
    dump(args.json, [f for f, _ in rows], meta)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
