"""One engine process of the multi-engine demo and the fleet's fault tests: a Manager with a
cpu tier and the shared tier, behind a SharedCache, serving a synthetic workload.

The "model" is a stand-in: a context's KV is generated from its id (the same bytes in every
engine, as a real model's would be) and a miss costs a prefill of `prefill_s_per_1k` seconds
per 1k tokens (slept; DESIGN §8 measured 1.8 s for SmolLM2 on this CPU). Each request prints
one JSON line: engine, context, source (local | remote | miss), ttft_s, and the sha256 of the
KV served. Then it keeps serving its own contexts locally for `--serve-s` seconds, printing
a line per round, so a test can watch it survive faults around it.

    python -P -m evicctl.fleet.worker --url redis://127.0.0.1:7100 --engine e1 --root /tmp/fleet
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import time
from pathlib import Path

QUERY_PREFILL_S = 0.01  # the new query's tokens on top of a cached context


def context_kv(context_id: str, tokens: int):
    import torch

    from evicctl.manager import KV

    seed = int.from_bytes(hashlib.sha256(context_id.encode()).digest()[:4], "little")
    g = torch.Generator().manual_seed(seed)
    keys = [torch.randn(1, 3, tokens, 64, generator=g) for _ in range(2)]
    values = [torch.randn(1, 3, tokens, 64, generator=g) for _ in range(2)]
    return KV.full(keys, values)


def kv_digest(kv) -> str:
    h = hashlib.sha256()
    for t in (*kv.keys, *kv.values):
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True)
    p.add_argument("--engine", required=True)
    p.add_argument("--root", type=Path, required=True)
    p.add_argument("--namespace", default="evk")
    p.add_argument("--contexts", type=int, default=12)
    p.add_argument("--requests", type=int, default=36)
    p.add_argument("--ids", default="", help="comma-separated context ids to request in order (instead of a workload)")
    p.add_argument("--tokens", type=int, default=512)
    p.add_argument("--zipf", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prefill-s-per-1k", type=float, default=0.5)
    p.add_argument("--cpu-bytes", type=int, default=2 << 20)
    p.add_argument("--shared-bytes", type=int, default=256 << 20)
    p.add_argument("--holder-timeout-s", type=float, default=None)
    p.add_argument("--serve-s", type=float, default=0.0)
    p.add_argument("--no-share", action="store_true", help="this manager's tiers only (the baseline)")
    p.add_argument("--start-at", type=float, default=0.0, help="wall time to start requesting (aligns engines)")
    return p.parse_args(argv)


def build_manager(args: argparse.Namespace):
    from evicctl.config import ManagerConfig, TierConfig
    from evicctl.manager import Manager

    home = args.root / args.engine
    config = ManagerConfig(
        db_path=home / "evicctl.db", cache_dir=home / "cache", codecs=("none", "int8"),
        tiers=(TierConfig("cpu", capacity_bytes=args.cpu_bytes),
               TierConfig("redis", capacity_bytes=args.shared_bytes, url=args.url, namespace=args.namespace,
                          model="fleet-demo-model", engine=args.engine)),
    )  # fmt: skip
    manager = Manager(config, probe=False).start()
    if args.holder_timeout_s is not None and manager.fleet is not None:
        manager.fleet.holder_timeout_s = args.holder_timeout_s
    return manager


def workload(args: argparse.Namespace) -> list[str]:
    if args.ids:
        return args.ids.split(",")
    rng = random.Random(args.seed)
    weights = [1 / (i + 1) ** args.zipf for i in range(args.contexts)]
    return [f"ctx{rng.choices(range(args.contexts), weights)[0]:03d}" for _ in range(args.requests)]


def serve(cache, context_id: str, args: argparse.Namespace) -> dict:
    start = time.perf_counter()
    served = cache.lookup(context_id, "cpu", keep=False)
    if served is None:
        time.sleep(args.prefill_s_per_1k * args.tokens / 1000)  # the stand-in model's prefill
        kv = context_kv(context_id, args.tokens)
        cache.store(context_id, kv, prefill_s=time.perf_counter() - start)
        source, digest = "miss", kv_digest(kv)
    else:
        time.sleep(QUERY_PREFILL_S)
        source, digest = served.source, kv_digest(served.kv)
    ttft_s = time.perf_counter() - start
    if served is not None and served.source == "remote":
        cache.keep(context_id, served)  # after the first token: off the TTFT's path
    return {"engine": args.engine, "context_id": context_id, "source": source, "ttft_s": round(ttft_s, 4), "kv": digest}


def main(argv: list[str] | None = None) -> int:
    from evicctl.entry import keep_checkout_root_off_path

    keep_checkout_root_off_path()
    import logging

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    args = parse(argv)
    from evicctl.fleet.sharing import SharedCache

    manager = build_manager(args)
    cache = SharedCache(manager)
    if args.no_share:
        cache.tier = None  # lookups and stores stay in this manager's tiers
    print(json.dumps({"engine": args.engine, "ready": True}), flush=True)
    if args.start_at:
        time.sleep(max(0.0, args.start_at - time.time()))
    try:
        for context_id in workload(args):
            print(json.dumps(serve(cache, context_id, args)), flush=True)
        deadline = time.monotonic() + args.serve_s
        while time.monotonic() < deadline:  # keep serving what this engine holds
            ids = manager.context_ids()
            hits = sum(manager.lookup(c, "cpu") is not None for c in ids)
            tier = cache.tier
            print(json.dumps({"engine": args.engine, "alive": True, "local_hits": hits, "contexts": len(ids),
                              "shared_state": tier.state if tier else None, "leader": bool(manager.fleet and manager.fleet.epoch),
                              "epoch": manager.fleet.epoch if manager.fleet else 0}), flush=True)  # fmt: skip
            time.sleep(0.25)
    finally:
        manager.close()
    print(json.dumps({"engine": args.engine, "done": True}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
