"""Codec encode/decode throughput on CPU vs a plain tensor copy of the same KV.

SmolLM2-135M-shaped KV (30 layers, 3 KV heads, head_dim 64, 9 query heads), fp32, with a
16-query snapkv window; 1k and 4k tokens. Throughput is in GB/s of *uncompressed* KV (the
context's raw keys + values) per second, so codecs compare with each other and with the
baseline, a ``clone()`` of every key and value tensor, measured in the same run. Each
number is the best (minimum time) of --repeats runs after one warm-up: this 2-core machine
is shared, and the minimum is the least disturbed by other processes.

    .venv/bin/python benchmarks/codec_bench.py [--tokens 1024 4096] [--repeats 5] [--codecs ...]
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from rich.console import Console
from rich.table import Table

from evicctl.config import DEFAULT_CODECS
from evicctl.manager.codecs.codec import example_codec_names, get_codec
from evicctl.manager.kv import KV

LAYERS, KV_HEADS, Q_HEADS, HEAD_DIM, WINDOW = 30, 3, 9, 64, 16


def smollm2_kv(tokens: int, seed: int = 0) -> KV:
    """Random KV with window queries and the model-side token scores (kvzip, expected: the
    engine computes them when it stores a context; random ones cost the codecs the same)."""
    gen = torch.Generator().manual_seed(seed)
    shape = (1, KV_HEADS, tokens, HEAD_DIM)
    keys = [torch.randn(*shape, generator=gen) for _ in range(LAYERS)]
    values = [torch.randn(*shape, generator=gen) for _ in range(LAYERS)]
    kv = KV.full(keys, values, torch.randn(LAYERS, Q_HEADS, WINDOW, HEAD_DIM, generator=gen))
    kv.token_scores.update({name: torch.rand(LAYERS, KV_HEADS, tokens, generator=gen) for name in ("kvzip", "expected")})
    return kv


def best_s(fn, repeats: int) -> float:
    fn()  # warm-up: allocator, lazy imports
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def bench(tokens: int, codecs: list[str], repeats: int) -> tuple[Table, dict]:
    kv = smollm2_kv(tokens)
    raw = kv.nbytes
    copy_s = best_s(lambda: [t.clone() for t in (*kv.keys, *kv.values)], repeats)
    copy_gbps = raw / copy_s / 1e9
    table = Table(title=f"codecs on CPU, SmolLM2 KV, {tokens} tokens, fp32 ({raw / 1e6:.1f} MB raw); "
                  f"baseline copy {copy_gbps:.2f} GB/s")  # fmt: skip
    for col in ("codec", "stored MB", "ratio", "encode ms", "encode GB/s", "x copy", "decode ms", "decode GB/s", "x copy"):
        table.add_column(col, justify="left" if col == "codec" else "right")
    results = {"tokens": tokens, "raw_bytes": raw, "copy_gbps": copy_gbps, "codecs": {}}
    for name in codecs:
        codec = get_codec(name)
        stored = codec.encode(kv)
        enc_s = best_s(lambda c=codec: c.encode(kv), repeats)
        dec_s = best_s(lambda c=codec, s=stored: c.decode(s), repeats)
        enc_gbps, dec_gbps = raw / enc_s / 1e9, raw / dec_s / 1e9
        results["codecs"][name] = {"stored_bytes": stored.nbytes, "encode_s": enc_s, "decode_s": dec_s}
        table.add_row(
            name,
            f"{stored.nbytes / 1e6:.2f}",
            f"{raw / stored.nbytes:.2f}x",
            f"{enc_s * 1e3:.1f}",
            f"{enc_gbps:.2f}",
            f"{enc_gbps / copy_gbps:.2f}",
            f"{dec_s * 1e3:.2f}",
            f"{dec_gbps:.2f}",
            f"{dec_gbps / copy_gbps:.2f}",
        )
    return table, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--codecs", nargs="+", default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    codecs = args.codecs or list(dict.fromkeys([*DEFAULT_CODECS, *example_codec_names()]))
    console = Console(width=180)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    console.print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores, load average {load}")
    for tokens in args.tokens:
        table, _ = bench(tokens, codecs, args.repeats)
        console.print(table)


if __name__ == "__main__":
    main()
