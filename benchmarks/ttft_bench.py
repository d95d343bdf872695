"""TTFT on this machine: a hit from each tier (and codec) against a miss (full prefill).

Real model (SmolLM2-135M-Instruct, fp32), real SQuAD contexts of ~1k and ~4k tokens, the
real Manager with one tier per run; placements are forced with the operator's `pin`
command. A miss prefills context + question; a hit loads the stored KV, decodes it and
prefills only the question. Disk hits are measured cold (the file's pages dropped from the
page cache with posix_fadvise before each read) and warm. TTFT is the wall time from the
request to the first answer token (max_new_tokens=1); medians of --repeats.

    .venv/bin/python benchmarks/ttft_bench.py [--sizes 1024 4096] [--repeats 3] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from evicctl.config import ManagerConfig, TierConfig, default_cache_dir
from evicctl.engine.data import squad_contexts
from evicctl.engine.engine import Engine
from evicctl.engine.model import load_model

HIT_CASES = (
    ("gpu", "none"), ("gpu", "int4"),
    ("cpu", "none"), ("cpu", "int8"), ("cpu", "int4"), ("cpu", "snapkv@0.5"),
    ("disk", "none"), ("disk", "int4"),
)  # fmt: skip


def pick_context(tokenizer, target_tokens: int):
    """The SQuAD context closest to the target size (deterministic)."""
    return min(squad_contexts(tokenizer, target_tokens=target_tokens), key=lambda c: (abs(c.tokens - target_tokens), c.id))


def drop_page_cache(path: str | None) -> None:
    """Evict one file's pages from the OS page cache (only that file; nothing global)."""
    if not path or not os.path.exists(path):
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def manager_for(tier: str, workdir: Path, device: str):
    from evicctl.manager.manager import Manager

    cfg = TierConfig(tier, capacity_bytes=4 << 30, path=workdir / "disk" if tier == "disk" else None)
    config = ManagerConfig(db_path=workdir / f"{tier}.db", cache_dir=workdir, tiers=(cfg,), device=device,
                           codecs=("none", *sorted({c for _, c in HIT_CASES})))  # fmt: skip
    return Manager(config).start()


def pin(manager, context_id: str, tier: str, codec: str) -> None:
    from evicctl.control import ControlClient

    client = ControlClient(manager.config.db_path)
    outcome = client.wait(client.submit("pin", context_id, {"tier": tier, "codec": codec, "force": True}, "bench"), 60)
    deadline = time.monotonic() + 30  # the move may still be finishing when the command reports
    while (manager.placement(context_id).tier, manager.placement(context_id).codec) != (tier, codec):
        if outcome.status != "done" or time.monotonic() > deadline:
            raise RuntimeError(f"pin {context_id} to {tier}/{codec} failed: {outcome}, now {manager.placement(context_id)}")
        time.sleep(0.05)


def measure(engine, context, question: str, repeats: int, before=None) -> list:
    out = []
    for _ in range(repeats):
        if before is not None:
            before()
        out.append(engine.answer(context.id, context.text, question, max_new_tokens=1))
    return out


def run_size(model, tokenizer, target: int, repeats: int, workdir: Path, console: Console, device: str,
             only_tiers: tuple[str, ...] | None = None) -> list[dict]:  # fmt: skip
    context = pick_context(tokenizer, target)
    question = context.test[0].question
    rows = []
    misses = []
    tiers = ("gpu", "cpu", "disk") if device.startswith("cuda") else ("cpu", "disk")
    tiers = tuple(t for t in tiers if not only_tiers or t in only_tiers)
    for tier in tiers:
        manager = manager_for(tier, workdir / f"{target}-{tier}", device)
        try:
            engine = Engine(manager, model, tokenizer, device)
            # a miss per repeat (fresh ids); each hit case then stores that KV under its own id,
            # since a pin can only compress further (dropped tokens cannot come back)
            for r in range(repeats if tier == tiers[0] else 1):
                ctx = type(context)(**{**context.__dict__, "id": f"{context.id}#{r}"})
                misses += measure(engine, ctx, question, 1)
            kv = misses[-1].full_kv
            for hit_tier, codec in HIT_CASES:
                if hit_tier != tier:
                    continue
                ctx = type(context)(**{**context.__dict__, "id": f"{context.id}/{codec}"})
                manager.store(ctx.id, kv)
                pin(manager, ctx.id, tier, codec)
                engine.answer(ctx.id, ctx.text, question, max_new_tokens=1)  # warm-up
                if tier == "disk":
                    loc = manager.placement(ctx.id).location
                    cold = measure(engine, ctx, question, repeats, before=lambda loc=loc: drop_page_cache(loc))
                    rows.append(_row(target, ctx.id, f"hit {tier} (cold)", codec, cold, manager))
                    rows.append(_row(target, ctx.id, f"hit {tier} (page-cached)", codec,
                                     measure(engine, ctx, question, repeats), manager))  # fmt: skip
                else:
                    rows.append(_row(target, ctx.id, f"hit {tier}", codec, measure(engine, ctx, question, repeats), manager))
                console.print(f"  {target}: {rows[-1]['path']} {codec}: {rows[-1]['ttft_s']:.3f} s")
        finally:
            manager.close()
    rows.insert(0, _row(target, None, "miss (full prefill)", "-", misses, None))
    return rows


def _row(target, context_id, path, codec, answers, manager) -> dict:
    med = statistics.median
    hit = [a for a in answers if a.hit] or answers
    if manager is not None and len(hit) != len(answers):  # a "hit" that missed would hide in a median
        raise RuntimeError(f"{context_id}: {len(answers) - len(hit)} of {len(answers)} hits came back as misses")
    placement = manager.placement(context_id) if manager is not None else None
    return {
        "size": target, "tokens": answers[0].context_tokens, "path": path, "codec": codec,
        "ttft_s": med([a.ttft.first_token_s for a in hit]),
        "load_s": med([a.ttft.load_s for a in hit]), "decode_s": med([a.ttft.decode_s for a in hit]),
        "prefill_s": med([a.ttft.prefill_s for a in hit]), "kept": answers[0].kept_tokens,
        "stored_mib": placement.stored_bytes / (1 << 20) if placement else None,
        "n": len(hit),
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--cache-dir", type=Path, default=default_cache_dir())
    ap.add_argument("--device", default="cpu", help="cpu, or cuda (adds the gpu tier)")
    ap.add_argument("--tiers", nargs="+", default=None, help="only these tiers (the first one also times the misses)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    console = Console(width=None if sys.stdout.isatty() else 150)
    model, tokenizer = load_model(args.cache_dir, args.device)
    rows = []
    with tempfile.TemporaryDirectory(prefix="ttft-bench-") as tmp:
        for size in args.sizes:
            start = time.perf_counter()
            rows += run_size(model, tokenizer, size, args.repeats, Path(tmp), console, args.device,
                             tuple(args.tiers) if args.tiers else None)
            console.print(f"{size}-token context measured in {time.perf_counter() - start:.0f} s")
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    table = Table(title=f"TTFT on {where}, SmolLM2-135M fp32, median of {args.repeats}")
    for col in ("context", "path", "codec", "kept tokens", "stored MiB", "TTFT s", "load s", "decode s", "prefill s", "vs miss"):
        table.add_column(col, justify="left" if col in ("path", "codec") else "right")
    for row in rows:
        miss = next(r for r in rows if r["size"] == row["size"] and r["path"].startswith("miss"))
        stored = f"{row['stored_mib']:.1f}" if row["stored_mib"] else "-"
        table.add_row(f"{row['tokens']} tok", row["path"], row["codec"], str(row["kept"]), stored, f"{row['ttft_s']:.3f}",
                      f"{row['load_s']:.3f}", f"{row['decode_s']:.3f}", f"{row['prefill_s']:.3f}",
                      f"{miss['ttft_s'] / row['ttft_s']:.1f}x faster" if row is not miss else "1.0x")  # fmt: skip
    console.print(table)


if __name__ == "__main__":
    main()
