"""Fleet figures: cross-engine hit rate and TTFT with 1, 2, 3 engine processes on one trace,
the shared tier's per-operation overhead (leases, accounting) against a private redis tier,
and remote-tier load bandwidth. Starts its own 3-node cluster (scripts/redis-cluster.sh).

    .venv/bin/python -P benchmarks/fleet_bench.py [--requests 60] [--contexts 12]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "redis-cluster.sh"
MIB = 1 << 20


def start_cluster(workdir: Path, base: int) -> str:
    out = subprocess.run([str(SCRIPT), "start", str(workdir), str(base), "3"], capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


def trace(requests: int, contexts: int, zipf: float, seed: int) -> list[str]:
    rng = random.Random(seed)
    weights = [1 / (i + 1) ** zipf for i in range(contexts)]
    return [f"ctx{rng.choices(range(contexts), weights)[0]:03d}" for _ in range(requests)]


def run_engines(url: str, n: int, ids: list[str], *, share: bool, tokens: int, prefill: float) -> list[dict]:
    """The trace dealt round-robin to n engine processes (a load balancer's view), started together."""
    root = Path(tempfile.mkdtemp(prefix="fleet-bench-"))
    namespace = f"b{uuid.uuid4().hex[:8]}"
    start_at = time.time() + 4.0 + n  # after every process has imported and started its manager
    procs = []
    for i in range(n):
        cmd = [sys.executable, "-P", "-m", "evicctl.fleet.worker", "--url", url, "--root", str(root), "--namespace",
               namespace, "--engine", f"e{i}", "--ids", ",".join(ids[i::n]), "--tokens", str(tokens),
               "--prefill-s-per-1k", str(prefill), "--cpu-bytes", str(256 * MIB), "--start-at", str(start_at)]  # fmt: skip
        if not share:
            cmd.append("--no-share")
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True))
    rows = []
    for p in procs:
        out, _ = p.communicate(timeout=600)
        rows += [json.loads(line) for line in out.splitlines() if '"source"' in line]
    return rows


def summarize(rows: list[dict]) -> dict:
    hits = [r for r in rows if r["source"] != "miss"]
    ttft = [r["ttft_s"] for r in rows]
    return {
        "requests": len(rows), "hit_rate": len(hits) / len(rows),
        "remote_hits": sum(r["source"] == "remote" for r in rows), "local_hits": sum(r["source"] == "local" for r in rows),
        "ttft_mean_s": statistics.mean(ttft), "ttft_p50_s": statistics.median(ttft),
        "hit_ttft_p50_s": statistics.median([r["ttft_s"] for r in hits]) if hits else None,
        "remote_ttft_p50_s": statistics.median([r["ttft_s"] for r in rows if r["source"] == "remote"] or [float("nan")]),
    }  # fmt: skip


def op_overhead(url: str, nbytes: int, reps: int) -> dict:
    """Median seconds per put / get / delete / existence check, shared tier vs private tier."""
    import torch

    from evicctl.manager.codecs.codec import Stored
    from evicctl.manager.tiers.remote import RedisTier
    from evicctl.manager.tiers.remote_client import connect
    from evicctl.manager.tiers.remote_shared import SharedRedisTier

    stored = Stored("none", {"k": torch.randint(0, 255, (nbytes,), dtype=torch.uint8)}, {})
    shared = SharedRedisTier(url, capacity_bytes=1 << 34, client=connect(url), namespace=f"o{uuid.uuid4().hex[:6]}",
                             holder="bench")  # fmt: skip
    private = RedisTier(url, capacity_bytes=1 << 34, client=connect(url), prefix=f"p{uuid.uuid4().hex[:6]}:")
    out = {}
    for name, tier in (("private", private), ("shared", shared)):
        times: dict[str, list[float]] = {"put": [], "get": [], "contains": [], "delete": []}
        for i in range(reps):
            key = f"c{i}.none"
            for op in times:
                args = (key, stored) if op == "put" else (key,)
                t = time.perf_counter()
                getattr(tier, op)(*args)
                times[op].append(time.perf_counter() - t)
        out[name] = {op: statistics.median(v) for op, v in times.items()}
    return out


def load_bandwidth(url: str, nbytes: int, reps: int) -> float:
    import torch

    from evicctl.manager.codecs.codec import Stored
    from evicctl.manager.tiers.remote_client import connect
    from evicctl.manager.tiers.remote_shared import SharedRedisTier

    tier = SharedRedisTier(url, capacity_bytes=1 << 34, client=connect(url), namespace=f"w{uuid.uuid4().hex[:6]}", holder="bw")
    tier.put("big.none", Stored("none", {"k": torch.randint(0, 255, (nbytes,), dtype=torch.uint8)}, {}))
    seconds = []
    for _ in range(reps):
        _, s = tier.fetch("big", "none")
        seconds.append(s)
    tier.delete("big.none")
    return nbytes / statistics.median(seconds)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=60)
    p.add_argument("--contexts", type=int, default=12)
    p.add_argument("--zipf", type=float, default=0.8)
    p.add_argument("--tokens", type=int, default=512)
    p.add_argument("--prefill-s-per-1k", type=float, default=0.5)
    p.add_argument("--base-port", type=int, default=7400)
    args = p.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="fleet-cluster-"))
    url = start_cluster(workdir, args.base_port)
    try:
        ids = trace(args.requests, args.contexts, args.zipf, seed=0)
        print("| engines | sharing | requests | hit rate | remote hits | TTFT mean (s) | TTFT p50 (s) | remote-hit TTFT p50 (s) |")
        print("|---|---|---|---|---|---|---|---|")
        for n in (1, 2, 3):
            for share in (True, False) if n > 1 else (True,):
                s = summarize(run_engines(url, n, ids, share=share, tokens=args.tokens, prefill=args.prefill_s_per_1k))
                print(f"| {n} | {'shared' if share else 'private'} | {s['requests']} | {s['hit_rate']:.2f} | "
                      f"{s['remote_hits']} | {s['ttft_mean_s']:.3f} | {s['ttft_p50_s']:.3f} | {s['remote_ttft_p50_s']:.3f} |", flush=True)
        print()
        print("| object | tier | put (ms) | get (ms) | contains (ms) | delete (ms) |")
        print("|---|---|---|---|---|---|")
        for nbytes in (64 << 10, 4 * MIB):
            for name, t in op_overhead(url, nbytes, reps=30).items():
                print(f"| {nbytes >> 10} KiB | {name} | {t['put'] * 1e3:.2f} | {t['get'] * 1e3:.2f} | "
                      f"{t['contains'] * 1e3:.2f} | {t['delete'] * 1e3:.2f} |", flush=True)
        print()
        print(f"remote-tier load bandwidth (64 MiB object, lease + read + checksum + parse): "
              f"{load_bandwidth(url, 64 * MIB, 5) / 1e6:.0f} MB/s")
    finally:
        subprocess.run([str(SCRIPT), "stop", str(workdir)], check=False)


if __name__ == "__main__":
    main()
