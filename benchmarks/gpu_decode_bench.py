"""Whole-context decode on the GPU, every codec of the menu, beside its kernels and the copy ceiling.

    PYTHONPATH=. python -P benchmarks/gpu_decode_bench.py --out DIR [--tokens 8192,32768] [--profile NAME]

Llama-3.1-8B shapes (32 layers, 8 KV heads, head_dim 128, bf16), stored forms on the GPU.
For every codec and context length:

- `decode device`: device time of `get_codec(name).decode(stored)` in a batch of back-to-back
  calls (the host launches ahead, as in a serving loop that keeps the GPU busy);
- `decode wall`: one call on an idle device, to completion (host overhead included);
- `cold wall`: the same for a stored form decoded for the first time (its decode plan, the
  checked layer tables a tier's repeated decodes reuse, built in the call);
- `kernels`: device time of the dequantize launches alone (keys + values, every layer), for
  the quantized codecs, as % of the copy ceiling on the bytes those launches move (codes,
  scales and minima read, dequantized rows written). PyramidKV forms (per-layer token
  counts) take one ragged launch per side like the uniform ones; ThinK forms' key launch
  writes whole head_dim-wide rows (the kept channels and the zeros between them);
- each as GB/s of bytes moved (stored bytes read + decoded keys and values written) and % of
  the device copy ceiling measured in the same run.

Codecs whose scorer needs the engine's per-token scores (`KV.token_scores`: `kvzip@`,
`expected@`) are skipped: the random KV here has none to give them, and their stored form
and decode are those of `snapkv@` at the same ratio (the scorer only picks other tokens).

`--profile NAME` prints torch.profiler's top operations of one decode of that codec at the
longest length (where the time goes). Results: DIR/gpu_decode.json and the table on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ (never the checkout root: -P)

from gpu_bench import call_s as time_wall_s  # noqa: E402  (one idle call, to completion)
from gpu_bench import time_gpu  # noqa: E402  (batches between two events)


def time_device_s(fn) -> float:
    """Median device seconds per call of fn() in back-to-back batches (gpu_bench.time_gpu)."""
    return time_gpu(fn, budget_s=0.3, max_batch=32)

LAYERS, KV_HEADS, HEAD_DIM, Q_HEADS, WINDOW = 32, 8, 128, 32, 16
DTYPE = torch.bfloat16
DEVICE = "cuda"  # (tests run the helpers on the CPU through Triton's interpreter)


def copy_ceiling_bps() -> float:
    n = 4 << 30
    src = torch.empty(n, dtype=torch.uint8, device="cuda").random_(0, 255)
    dst = torch.empty_like(src)
    return 2 * n / time_device_s(lambda: dst.copy_(src))


def make_kv(tokens: int, gen: torch.Generator):
    from evicctl.manager.kv import KV

    def layer():
        x = torch.randn(1, KV_HEADS, tokens, HEAD_DIM, device=DEVICE, generator=gen)
        return (x * (1 + 4 * (torch.rand(HEAD_DIM, device=DEVICE, generator=gen) < 0.05))).to(DTYPE)

    keys = [layer() for _ in range(LAYERS)]
    values = [layer() for _ in range(LAYERS)]
    wq = torch.randn(LAYERS, Q_HEADS, WINDOW, HEAD_DIM, device=DEVICE, generator=gen).to(DTYPE)
    return KV.full(keys, values, window_queries=wq)


def kernel_only_s(stored, codec) -> tuple[float, int] | None:
    """(device seconds, bytes moved) of the dequantize launches alone (both sides, every
    layer), into outputs allocated beforehand; None for a codec that does not quantize."""
    from evicctl.kernels import quant as kq

    if not codec.bits:
        return None
    meta, t = stored.meta, stored.tensors
    layers, head_dim = int(meta["layers"]), int(meta["head_dim"])
    bits, group, vgroup = int(meta["bits"]), int(meta["group"]), int(meta["value_group"])
    # ThinK: the keys' codes hold the kept channels only, written to their columns of
    # head_dim-wide rows, zeros between them (ch [L, H, C])
    channels = t.get("ch")

    def parts(side):
        return [[t[f"{side}.{i}.{p}"] for i in range(layers)] for p in ("codes", "scale", "mn")]

    def outputs(codes):
        """The dequantized rows: stacked when every layer has one token count, else one
        tensor per layer (PyramidKV: the launch is ragged)."""
        rows = [c.shape[2] for c in codes]
        heads = codes[0].shape[1]
        if len(set(rows)) == 1:
            return torch.empty((layers, 1, heads, rows[0], head_dim), dtype=DTYPE, device=DEVICE)
        return [torch.empty((1, heads, r, head_dim), dtype=DTYPE, device=DEVICE) for r in rows]

    k_parts, v_parts = parts("k"), parts("v")
    k_out, v_out = outputs(k_parts[0]), outputs(v_parts[0])
    read = sum(x.nbytes for p in (*k_parts, *v_parts) for x in p)
    written = sum(o.nbytes for out in (k_out, v_out) for o in (out if isinstance(out, list) else [out]))

    def run():
        kq.dequantize_keys_layers(*k_parts, bits, group, DTYPE, out=k_out, channels=channels)
        kq.dequantize_values_layers(*v_parts, bits, vgroup, DTYPE, out=v_out)

    return time_device_s(run), read + written


def profile(codec, stored) -> str:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    codec.decode(stored)
    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            codec.decode(stored)
        torch.cuda.synchronize()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tokens", default="8192,32768")
    parser.add_argument("--codecs", default="", help="comma-separated; default: the default menu")
    parser.add_argument("--profile", default="", help="comma-separated codec names to profile")
    args = parser.parse_args()
    from evicctl.config import DEFAULT_CODECS
    from evicctl.manager.codecs.codec import Stored, get_codec
    from evicctl.manager.codecs.scorers import available_scorers

    args.out.mkdir(parents=True, exist_ok=True)
    names = [n for n in args.codecs.split(",") if n] or list(DEFAULT_CODECS)
    lengths = [int(t) for t in args.tokens.split(",")]
    copy_bps = copy_ceiling_bps()
    torch.cuda.empty_cache()  # its 8 GiB back before the codecs' tensors
    print(f"device copy ceiling {copy_bps / 1e9:,.0f} GB/s (read + write), {torch.cuda.get_device_name()}")
    rows, profiles = [], {}
    gen = torch.Generator(device="cuda").manual_seed(7)
    header = f"{'tokens':>6} {'codec':22} {'stored MB':>9} {'kernels %':>9} {'device ms':>9} {'device %':>8} {'wall ms':>8} {'wall %':>6} {'cold ms':>8} {'cold %':>6}"
    print(header)
    for tokens in lengths:
        kv = make_kv(tokens, gen)
        raw_bytes = kv.nbytes
        for name in names:
            codec = get_codec(name)
            if codec.scorer and codec.scorer not in available_scorers(kv):
                continue  # kvzip, expected: no token scores here (see the module docstring)
            stored = codec.encode(kv)
            decoded = codec.decode(stored)
            moved = stored.nbytes + decoded.nbytes
            del decoded
            device_s = time_device_s(lambda c=codec, s=stored: c.decode(s))
            wall_s = time_wall_s(lambda c=codec, s=stored: c.decode(s), reps=9)
            # a new Stored over the same tensors: no plan yet
            cold_s = time_wall_s(lambda c=codec, s=stored: c.decode(Stored(s.codec, dict(s.tensors), s.meta)))
            kernels = kernel_only_s(stored, codec)
            kern_s, kern_moved = kernels if kernels is not None else (None, 0)
            row = {
                "tokens": tokens, "codec": name, "raw_bytes": raw_bytes, "stored_bytes": stored.nbytes,
                "moved_bytes": moved, "device_s": device_s, "wall_s": wall_s, "cold_wall_s": cold_s, "kernels_s": kern_s,
                "device_pct_copy": 100 * moved / device_s / copy_bps,
                "wall_pct_copy": 100 * moved / wall_s / copy_bps,
                "cold_wall_pct_copy": 100 * moved / cold_s / copy_bps,
                "kernels_pct_copy": None if kern_s is None else 100 * kern_moved / kern_s / copy_bps,
            }
            rows.append(row)
            kp = "-" if kern_s is None else f"{row['kernels_pct_copy']:.0f}"
            print(f"{tokens:6d} {name:22} {stored.nbytes / 1e6:9.1f} {kp:>9} {device_s * 1e3:9.3f} "
                  f"{row['device_pct_copy']:8.0f} {wall_s * 1e3:8.3f} {row['wall_pct_copy']:6.0f} "
                  f"{cold_s * 1e3:8.3f} {row['cold_wall_pct_copy']:6.0f}", flush=True)
            if name in args.profile.split(",") and tokens == max(lengths):
                profiles[name] = profile(codec, stored)
            del stored
            torch.cuda.empty_cache()
        del kv
        torch.cuda.empty_cache()
    for name, table in profiles.items():
        print(f"\n== profile of {name} decode at {max(lengths)} tokens (5 calls)\n{table}")
    (args.out / "gpu_decode.json").write_text(json.dumps(
        {"copy_bps": copy_bps, "device": torch.cuda.get_device_name(), "rows": rows, "profiles": profiles}, indent=1))


if __name__ == "__main__":
    main()
