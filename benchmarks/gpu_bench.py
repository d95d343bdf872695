"""GPU benchmark (one run on one CUDA device): ceilings, kernels, tier loads, prefill costs.

    PYTHONPATH=. python benchmarks/gpu_bench.py --out DIR

1. Ceilings measured here: device copy (bytes read + written), pinned and pageable
   host -> device copies, a bf16 matrix product.
2. Every kernel on Llama-3.1-8B shapes (32 layers, 8 KV heads, head_dim 128, bf16) at 8k
   and 32k tokens: median time, bytes moved, GB/s, % of the copy ceiling, time over the
   floor (fewest bytes any version must move / copy ceiling), speed-up over the torch
   eager reference (evicctl.manager.codecs.quant / scorers), and the per-layer launch form.
3. Tier loads: cpu -> gpu against one pinned copy of as many bytes; pageable put through
   the staging ring against a pageable copy; disk -> gpu against a raw read of the same
   file (cold: the file dropped from the page cache first; and warm), sha256 alone.
3b. Low-bit codecs (int3 / int2, KIVI-style, packed): each kernel's GB/s against the copy
   ceiling at 8k and 32k tokens, and whole-context encode / decode through the codec path
   (get_codec(name).encode / decode, residual window included) as GB/s of bytes moved
   (stored read + raw written for a decode) and % of the copy ceiling.
4. Prefill of a random-initialised Llama-3.1-8B-shaped model (bf16, sdpa): vs context
   tokens (1k-32k) and vs query tokens on a cached prefix; fitted with
   evicctl.manager.costs.CostModel; written to DIR/h200_costs.json in the shape
   evicctl.replay.scenario reads (copy it to evicctl/data/).
Tables go to stdout (rich) and DIR/gpu_bench.txt; every number to DIR/gpu_bench.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

LAYERS, KV_HEADS, HEAD_DIM, Q_HEADS, WINDOW = 32, 8, 128, 32, 16
DTYPE = torch.bfloat16
GIB = 1 << 30
RESULTS: dict = {"sections": {}, "errors": {}}


# ---------------------------------------------------------------- timing


def time_gpu(fn, *, budget_s: float = 0.4, max_batch: int = 64) -> float:
    """Median seconds per call of fn(), device time: batches of back-to-back calls between two
    events (the host launches ahead while the device works, so launch overhead hides as it
    does in a serving loop), after a warm-up. See call_s for one call's wall time."""
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    once = max(start.elapsed_time(end) / 1e3, 1e-6)
    batch = int(min(max_batch, max(1, 0.02 / once)))
    rounds = int(min(15, max(3, budget_s / (once * batch))))
    times = []
    for _ in range(rounds):
        start.record()
        for _ in range(batch):
            fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3 / batch)
    return statistics.median(times)


def call_s(fn, reps: int = 7) -> float:
    """Median wall seconds of one call on an idle device, to completion (host overhead included)."""
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_host(fn, *, reps: int = 3, setup=None) -> float:
    """Median wall seconds of fn() (which synchronizes what it needs), after setup() each time."""
    times = []
    for _ in range(reps):
        if setup is not None:
            setup()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def section(name: str):
    """Run a section; a failure is recorded and the run goes on."""

    def wrap(fn):
        def run(*args, **kwargs):
            print(f"\n== {name}", flush=True)
            t0 = time.perf_counter()
            try:
                out = fn(*args, **kwargs)
                RESULTS["sections"][name] = {"seconds": round(time.perf_counter() - t0, 2)}
                return out
            except Exception as exc:  # keep measuring the other sections
                RESULTS["errors"][name] = "".join(traceback.format_exception(exc))
                print(f"!! {name} failed: {exc!r}", flush=True)
                traceback.print_exc()
                return None
            finally:
                torch.cuda.empty_cache()

        return run

    return wrap


# ---------------------------------------------------------------- ceilings


def _copy_d2d_s(n: int) -> float:
    a = torch.empty(n, dtype=torch.uint8, device="cuda").random_(0, 255)
    b = torch.empty_like(a)
    return time_gpu(lambda: b.copy_(a))


def _host_copies_s(n: int) -> tuple[float, float, float]:
    pinned = torch.empty(n, dtype=torch.uint8, pin_memory=True).random_(0, 255)
    pageable = torch.empty(n, dtype=torch.uint8).random_(0, 255)
    dev = torch.empty(n, dtype=torch.uint8, device="cuda")
    h2d_s = time_gpu(lambda: dev.copy_(pinned, non_blocking=True))
    d2h_s = time_gpu(lambda: pinned.copy_(dev, non_blocking=True))
    pageable_s = time_host(lambda: (dev.copy_(pageable), torch.cuda.synchronize()), reps=3)
    return h2d_s, d2h_s, pageable_s


def _matmul_s(m: int) -> float:
    x = torch.randn(m, m, device="cuda", dtype=torch.bfloat16)
    y = torch.randn(m, m, device="cuda", dtype=torch.bfloat16)
    return time_gpu(lambda: x @ y, budget_s=0.3)


@section("ceilings")
def ceilings() -> dict:
    n, h, m = 4 * GIB, GIB, 8192
    d2d_s = _copy_d2d_s(n)
    h2d_s, d2h_s, pageable_s = _host_copies_s(h)
    mm_s = _matmul_s(m)
    out = {
        "d2d_bps": 2 * n / d2d_s,
        "h2d_pinned_bps": h / h2d_s,
        "d2h_pinned_bps": h / d2h_s,
        "h2d_pageable_bps": h / pageable_s,
        "bf16_matmul_flops": 2 * m**3 / mm_s,
    }
    RESULTS["ceilings"] = out
    for k, v in out.items():
        print(f"  {k:20s} {v / 1e9:10.1f} G")
    return out


# ---------------------------------------------------------------- kernels


def make_kv(tokens: int, gen: torch.Generator):
    """32 separate layer tensors of keys and values (as an engine's cache holds them)."""
    def layer():
        x = torch.randn(1, KV_HEADS, tokens, HEAD_DIM, device="cuda", dtype=torch.float32, generator=gen)
        return (x * (1 + 4 * (torch.rand(HEAD_DIM, device="cuda", generator=gen) < 0.05))).to(DTYPE)

    keys = [layer() for _ in range(LAYERS)]
    values = [layer() for _ in range(LAYERS)]
    wq = torch.randn(LAYERS, Q_HEADS, WINDOW, HEAD_DIM, device="cuda", generator=gen).to(DTYPE)
    return keys, values, wq


def nbytes(*tensors) -> int:
    total = 0
    for t in tensors:
        if isinstance(t, (list, tuple)):
            total += nbytes(*t)
        elif t is not None:
            total += t.numel() * t.element_size()
    return total


def kernel_rows(tokens: int, copy_bps: float) -> list[dict]:
    from evicctl.kernels import gather as kg
    from evicctl.kernels import quant as kq
    from evicctl.kernels import scorers as ks

    from evicctl import kernels as K  # noqa: N812
    from evicctl.manager.codecs import quant as ref
    from evicctl.manager.codecs import scorers as sref
    from evicctl.manager.kv import KV

    assert K.available()
    gen = torch.Generator(device="cuda").manual_seed(tokens)
    keys, values, wq = make_kv(tokens, gen)
    kv = KV.full(keys, values, window_queries=wq)
    kept = tokens // 2
    idx = [
        torch.rand(1, KV_HEADS, tokens, device="cuda", generator=gen).topk(kept, dim=-1).indices.sort(dim=-1).values
        for _ in range(LAYERS)
    ]
    rows: list[dict] = []

    def row(name, moved, floor, kernel_fn, eager_fn=None, per_layer_fn=None, note=""):
        t = time_gpu(kernel_fn)
        r = {"tokens": tokens, "op": name, "kernel_s": t, "call_s": call_s(kernel_fn), "moved_bytes": moved, "floor_bytes": floor,
             "gbps": moved / t / 1e9, "pct_copy": 100 * moved / t / copy_bps, "x_floor": t / (floor / copy_bps), "note": note}
        if per_layer_fn is not None:
            r["per_layer_s"] = time_gpu(per_layer_fn)
        if eager_fn is not None:
            r["eager_s"] = time_gpu(eager_fn, budget_s=0.3)
            r["speedup"] = r["eager_s"] / t
        rows.append(r)
        print(f"  {tokens:6d} {name:34s} {t * 1e3:8.3f} ms {r['gbps']:8.0f} GB/s {r['pct_copy']:5.0f}% "
              f"x{r['x_floor']:.2f} floor  eager x{r.get('speedup', float('nan')):.1f}", flush=True)

    for bits in (8, 4):
        codes_k = kq.quantize_keys_layers(keys, bits)
        codes_v = kq.quantize_values_layers(values, bits)
        in_b, out_k, out_v = nbytes(keys), nbytes(codes_k), nbytes(codes_v)
        row(f"quantize keys int{bits}", in_b + out_k, in_b + out_k,
            lambda: kq.quantize_keys_layers(keys, bits),  # noqa: B023
            lambda: [ref.quantize_keys_ref(k, bits) for k in keys],  # noqa: B023
            lambda: [kq.quantize_keys(k, bits) for k in keys])  # noqa: B023
        row(f"quantize values int{bits}", in_b + out_v, in_b + out_v,
            lambda: kq.quantize_values_layers(values, bits),  # noqa: B023
            lambda: [ref.quantize_values_ref(v, bits) for v in values],  # noqa: B023
            lambda: [kq.quantize_values(v, bits) for v in values])  # noqa: B023
        ck = [tuple(p[i] for p in codes_k) for i in range(LAYERS)]
        cv = [tuple(p[i] for p in codes_v) for i in range(LAYERS)]
        row(f"dequantize keys int{bits}", in_b + out_k, in_b + out_k,
            lambda: kq.dequantize_keys_layers(*codes_k, bits, 32, DTYPE),  # noqa: B023
            lambda: [ref.dequantize_keys_ref(*c, bits, 32, DTYPE) for c in ck],  # noqa: B023
            lambda: [kq.dequantize_keys(*c, bits, 32, DTYPE) for c in ck])  # noqa: B023
        row(f"dequantize values int{bits}", in_b + out_v, in_b + out_v,
            lambda: kq.dequantize_values_layers(*codes_v, bits, 32, DTYPE),  # noqa: B023
            lambda: [ref.dequantize_values_ref(*c, bits, 32, DTYPE) for c in cv],  # noqa: B023
            lambda: [kq.dequantize_values(*c, bits, 32, DTYPE) for c in cv])  # noqa: B023

    gathered = nbytes(keys) // 2
    idx_b = nbytes(idx)
    row("gather keys (keep 1/2)", gathered * 2 + idx_b, gathered * 2 + idx_b,
        lambda: kg.gather_tokens_layers(keys, idx),
        lambda: [k.gather(2, i.unsqueeze(-1).expand(-1, -1, -1, HEAD_DIM)) for k, i in zip(keys, idx, strict=True)],
        lambda: [kg.gather_tokens(k, i) for k, i in zip(keys, idx, strict=True)])
    fused_out = nbytes(kg.gather_quantize_keys(keys, idx, 8))
    row("gather+quantize keys int8 (fused)", gathered + idx_b + fused_out, gathered + idx_b + fused_out,
        lambda: kg.gather_quantize_keys(keys, idx, 8),
        lambda: [ref.quantize_keys_ref(k.gather(2, i.unsqueeze(-1).expand(-1, -1, -1, HEAD_DIM)), 8)
                 for k, i in zip(keys, idx, strict=True)],
        lambda: kq.quantize_keys_layers(list(kg.gather_tokens_layers(keys, idx)), 8),
        note="per-layer column: gather kernel then quantize kernel (two passes)")

    scores_b = LAYERS * KV_HEADS * tokens * 4
    row("knorm scores", nbytes(keys) + scores_b, nbytes(keys) + scores_b,
        lambda: ks.knorm_scores_layers(keys),
        lambda: [sref.knorm(kv, i) for i in range(LAYERS)],
        lambda: [ks.knorm_scores(k) for k in keys])
    row("keydiff scores", 2 * nbytes(keys) + scores_b, nbytes(keys) + scores_b,
        lambda: ks.keydiff_scores_layers(keys),
        lambda: [sref.keydiff(kv, i) for i in range(LAYERS)],
        lambda: [ks.keydiff_scores(k) for k in keys],
        note="two reads of the keys: the anchor needs every key first")
    pos = kv.positions
    row("snapkv scores", 2 * nbytes(keys) + scores_b + nbytes(wq), nbytes(keys) + scores_b + nbytes(wq),
        lambda: ks.snapkv_scores_layers(keys, wq, pos, tokens),
        lambda: [sref.snapkv(kv, i) for i in range(LAYERS)],
        lambda: [ks.snapkv_scores(keys[i], wq[i], pos[i], tokens) for i in range(LAYERS)],
        note="two reads of the keys (softmax statistics, then probabilities) + torch pooling")
    row("snapkv scores (per layer)", 2 * nbytes(keys) + scores_b + nbytes(wq), nbytes(keys) + scores_b + nbytes(wq),
        lambda: [ks.snapkv_scores(keys[i], wq[i], pos[i], tokens) for i in range(LAYERS)],
        lambda: [sref.snapkv(kv, i) for i in range(LAYERS)],
        note="two reads of the keys (softmax statistics, then probabilities) + torch pooling")

    # the load path of a quantized context held in pinned host memory
    for bits in (8, 4):
        parts = kq.quantize_keys_layers(keys, bits)
        host = [p.cpu().pin_memory() for p in parts]
        dev = [torch.empty_like(p) for p in parts]
        codes_b = nbytes(host)

        def two_pass(host=host, dev=dev, bits=bits):
            for d, h in zip(dev, host, strict=True):
                d.copy_(h, non_blocking=True)
            kq.dequantize_keys_layers(*dev, bits, 32, DTYPE)

        row(f"load+dequantize keys int{bits} from host (fused)", codes_b + nbytes(keys), codes_b,
            lambda host=host, bits=bits: kq.dequantize_keys_layers(*host, bits, 32, DTYPE, device="cuda"),
            None, two_pass,
            note="floor = codes over the host link; per-layer column: H2D copy then dequantize")
        rows[-1]["gbps_link"] = codes_b / rows[-1]["kernel_s"] / 1e9
        rows[-1]["two_pass_link_gbps"] = codes_b / rows[-1]["per_layer_s"] / 1e9
    return rows


@section("kernels")
def kernels(ceil: dict) -> list[dict]:
    rows = []
    for tokens in (8192, 32768):
        rows += kernel_rows(tokens, ceil["d2d_bps"])
        torch.cuda.empty_cache()
    RESULTS["kernels"] = rows
    return rows


@section("tuning sweep")
def tuning_sweep(ceil: dict) -> list[dict]:
    """Launch shapes of each kernel at 32k tokens; the fastest is kept for the tables that
    follow (and becomes the module default in the repository)."""
    from evicctl.kernels import gather as kg
    from evicctl.kernels import quant as kq
    from evicctl.kernels import scorers as ks

    gen = torch.Generator(device="cuda").manual_seed(1)
    keys, values, _ = make_kv(32768, gen)
    idx = torch.arange(0, 32768, 2, device="cuda").expand(LAYERS, 1, KV_HEADS, -1).contiguous()
    codes = {(side, bits): (kq.quantize_keys_layers if side == "keys" else kq.quantize_values_layers)(
        keys if side == "keys" else values, bits) for side in ("keys", "values") for bits in (8, 4)}
    pos = torch.arange(32768, device="cuda").expand(KV_HEADS, -1)
    wq = torch.randn(Q_HEADS, WINDOW, HEAD_DIM, device="cuda").to(DTYPE)
    out: list[dict] = []

    def quick(fn):
        return time_gpu(fn, budget_s=0.12, max_batch=16)

    def pick(table: dict, name: str, options: list[dict], run) -> None:
        """Time run() under each option (a dict of TUNING entries); keep the fastest."""
        best = None
        for opt in options:
            table.update(opt)
            t = run()
            out.append({"kernel": name, **opt, "ms": t * 1e3})
            if best is None or t < best[0]:
                best = (t, opt)
        table.update(best[1])
        print(f"  {name:22s} best {best[1]} {best[0] * 1e3:.3f} ms", flush=True)

    warps = [{"w": w} for w in (1, 2, 4)]

    def keyed(prefix, opts):
        return [{f"{prefix}_warps": o["w"]} for o in opts]

    def both_bits(fn):
        return sum(quick(lambda bits=bits: fn(bits)) for bits in (8, 4))

    pick(kq.TUNING, "quantize keys", keyed("keys_quant", warps), lambda: both_bits(lambda b: kq.quantize_keys_layers(keys, b)))
    pick(kq.TUNING, "dequantize keys", keyed("keys_dequant", warps),
         lambda: both_bits(lambda b: kq.dequantize_keys_layers(*codes["keys", b], b, 32, DTYPE)))
    vopts = [{"block_t": bt, "w": w} for bt in (16, 32) for w in (1, 2, 4)]
    pick(kq.TUNING, "quantize values",
         [{"values_quant_block_t": o["block_t"], "values_quant_warps": o["w"]} for o in vopts],
         lambda: both_bits(lambda b: kq.quantize_values_layers(values, b)))
    pick(kq.TUNING, "dequantize values",
         [{"values_dequant_block_t": o["block_t"], "values_dequant_warps": o["w"]} for o in vopts],
         lambda: both_bits(lambda b: kq.dequantize_values_layers(*codes["values", b], b, 32, DTYPE)))
    kopts = [{"block_k": bk, "warps": w} for bk in (32, 64) for w in (1, 2, 4)]
    pick(kg.TUNING, "gather", kopts, lambda: quick(lambda: kg.gather_tokens_layers(keys, idx)))
    pick(ks.TUNING, "knorm+keydiff", kopts,
         lambda: quick(lambda: ks.knorm_scores_layers(keys)) + quick(lambda: ks.keydiff_scores_layers(keys)))
    sopts = [{"snap_block_k": bk, "snap_rows": 64, "snap_warps": w} for bk in (32, 64) for w in (4, 8)]
    pick(ks.TUNING, "snapkv", sopts, lambda: quick(lambda: ks.snapkv_scores(keys[0], wq, pos, 32768)))
    RESULTS["tuning"] = out
    RESULTS["tuning_chosen"] = {"quant": dict(kq.TUNING), "gather": dict(kg.TUNING), "scorers": dict(ks.TUNING)}
    return out


# ---------------------------------------------------------------- tiers


def stored_for(tokens: int, codec: str):
    from evicctl.manager.codecs.codec import get_codec
    from evicctl.manager.kv import KV

    gen = torch.Generator(device="cuda").manual_seed(7)
    keys, values, _ = make_kv(tokens, gen)
    stored = get_codec(codec).encode(KV.full(keys, values))
    return type(stored)(stored.codec, {k: t.cpu() for k, t in stored.tensors.items()}, stored.meta)


@section("tiers")
def tiers(ceil: dict, workdir: Path) -> list[dict]:
    from evicctl.manager.tiers.disk import DiskTier
    from evicctl.manager.tiers.gpu import HASH_WORKERS, GpuTier, tree_checksum
    from evicctl.manager.tiers.tier import CpuTier

    rows = []
    gpu = GpuTier(capacity_bytes=64 * GIB)
    cpu = CpuTier(capacity_bytes=64 * GIB, pin=True)
    disk = DiskTier(workdir / "disk", capacity_bytes=64 * GIB)

    def pinned_copy_s(n: int) -> float:
        src = torch.empty(n, dtype=torch.uint8, pin_memory=True)
        dst = torch.empty(n, dtype=torch.uint8, device="cuda")
        return time_gpu(lambda: dst.copy_(src, non_blocking=True), budget_s=0.3)

    for tokens, codec in ((8192, "none"), (32768, "none"), (32768, "int8")):
        stored = stored_for(tokens, codec)
        n = stored.nbytes
        cpu.put("c", stored)
        ceiling_s = pinned_copy_s(n)
        load_s = time_host(lambda: gpu.load_from(cpu, "c"), reps=5, setup=lambda: gpu.delete("c"))
        rows.append({"load": f"cpu -> gpu {codec} {tokens // 1024}k", "bytes": n, "seconds": load_s,
                     "gbps": n / load_s / 1e9, "baseline": "one pinned H2D copy of as many bytes",
                     "baseline_gbps": n / ceiling_s / 1e9, "pct": 100 * ceiling_s / load_s,
                     "tensors": len(stored.tensors)})
        gpu.delete("c")
        cpu.delete("c")
        if tokens == 8192:
            pageable = torch.empty(n, dtype=torch.uint8)
            dst = torch.empty(n, dtype=torch.uint8, device="cuda")
            base_s = time_host(lambda: (dst.copy_(pageable), torch.cuda.synchronize()), reps=3)  # noqa: B023
            put_s = time_host(lambda: gpu.put("p", stored), reps=3, setup=lambda: gpu.delete("p"))  # noqa: B023
            rows.append({"load": f"pageable -> gpu {codec} 8k (staging ring)", "bytes": n, "seconds": put_s,
                         "gbps": n / put_s / 1e9, "baseline": "pageable .copy_ to the device",
                         "baseline_gbps": n / base_s / 1e9, "pct": 100 * base_s / put_s})
            gpu.delete("p")
        print(f"  {rows[-1]}", flush=True)

    def drop_cache(path: str) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)

    def raw_read(path: str, chunk: int = 32 << 20) -> None:
        buf = torch.empty(chunk, dtype=torch.uint8, pin_memory=True)
        view = memoryview(buf.numpy())
        with open(path, "rb", buffering=0) as f:
            while f.readinto(view):
                pass

    sha_src = torch.empty(GIB, dtype=torch.uint8).random_(0, 255)
    sha_s = time_host(lambda: hashlib.sha256(memoryview(sha_src.numpy())).digest(), reps=2)
    RESULTS["sha256_bps"] = GIB / sha_s
    print(f"  sha256 {GIB / sha_s / 1e9:.2f} GB/s", flush=True)

    for tokens, codec in ((8192, "none"), (32768, "int4")):
        stored = stored_for(tokens, codec)
        put = disk.put("d", stored)
        size = os.path.getsize(put.location)
        start = time.perf_counter()
        tree_sum = tree_checksum(put.location)
        RESULTS.setdefault("tree_checksum_bps", []).append(size / (time.perf_counter() - start))
        for state in ("cold", "warm"):
            def evict(state=state, path=put.location):
                if state == "cold":
                    drop_cache(path)

            raw_s = time_host(lambda path=put.location: raw_read(path), reps=3, setup=evict)
            load_s = time_host(lambda: gpu.load_from(disk, "d"), reps=3, setup=lambda evict=evict: (gpu.delete("d"), evict()))
            host_s = time_host(lambda: gpu.put("h", disk.get("d")[0]), reps=2,
                               setup=lambda evict=evict: (gpu.delete("h"), evict()))
            gpu.delete("d")
            gpu.delete("h")
            tree_s = time_host(lambda: gpu.load_file("t", put.location, tree_sum), reps=3,  # noqa: B023
                               setup=lambda evict=evict: (gpu.delete("t"), evict()))
            gpu.delete("t")
            rows.append({"load": f"disk -> gpu {codec} {tokens // 1024}k {state}", "bytes": size, "seconds": load_s,
                         "gbps": size / load_s / 1e9, "baseline": "raw read of the same file",
                         "baseline_gbps": size / raw_s / 1e9, "pct": 100 * raw_s / load_s,
                         "host_path_gbps": size / host_s / 1e9})
            rows.append({"load": f"  same, sha256-tree verify ({HASH_WORKERS} threads)", "bytes": size, "seconds": tree_s,
                         "gbps": size / tree_s / 1e9, "baseline": "raw read of the same file",
                         "baseline_gbps": size / raw_s / 1e9, "pct": 100 * raw_s / tree_s})
            print(f"  {rows[-2]}\n  {rows[-1]}", flush=True)
        disk.delete("d")
    gpu.probe()
    RESULTS["gpu_probe"] = {"read_bps": gpu.read_bps, "write_bps": gpu.write_bps}
    RESULTS["tiers"] = rows
    RESULTS["tier_bps"] = {"cpu_read_bps": cpu.read_bps, "disk_read_bps": disk.read_bps, "gpu_write_bps": gpu.write_bps}
    return rows


# ---------------------------------------------------------------- prefill cost model


@section("prefill")
def prefill(ceil: dict) -> dict:
    import transformers
    from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=LAYERS,
        num_attention_heads=Q_HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=131072,
        rope_theta=500000.0, tie_word_embeddings=False,
    )
    cfg._attn_implementation = "sdpa"
    t0 = time.perf_counter()
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(DTYPE)
    try:
        with torch.device("cuda"):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(default)
    model.eval()
    init_s = time.perf_counter() - t0
    print(f"  model built in {init_s:.1f} s, {sum(p.numel() for p in model.parameters()) / 1e9:.2f} B params, "
          f"transformers {transformers.__version__}, attn {model.config._attn_implementation}", flush=True)
    gen = torch.Generator(device="cuda").manual_seed(0)

    def new_cache():
        try:
            return DynamicCache(config=cfg)
        except TypeError:
            return DynamicCache()

    @torch.inference_mode()
    def forward(ids, cache, start):
        pos = torch.arange(start, start + ids.shape[1], device="cuda")[None]
        out = model.model(input_ids=ids, past_key_values=cache, position_ids=pos, use_cache=True)
        return model.lm_head(out.last_hidden_state[:, -1:])

    samples = []
    ids_all = torch.randint(0, cfg.vocab_size, (1, 32768 + 1024), device="cuda", generator=gen)
    forward(ids_all[:, :1024], new_cache(), 0)  # warm-up
    torch.cuda.synchronize()
    for n in (1024, 2048, 4096, 8192, 16384, 32768):
        s = time_host(lambda n=n: (forward(ids_all[:, :n], new_cache(), 0), torch.cuda.synchronize()), reps=3)
        samples.append((n, 0, s))
        print(f"  prefill {n:6d} tokens: {s * 1e3:8.1f} ms", flush=True)
    for cached in (1024, 8192, 32768):
        holder = {"cache": new_cache()}
        forward(ids_all[:, :cached], holder["cache"], 0)
        for q in (16, 64, 256, 1024):
            def query(q=q, cached=cached, holder=holder):
                forward(ids_all[:, cached : cached + q], holder["cache"], cached)
                torch.cuda.synchronize()

            def crop(cached=cached, holder=holder):
                cache = holder["cache"]
                if cache.get_seq_length() > cached:
                    try:  # back to the prefix (the query appended to the cache)
                        cache.crop(cached)
                    except (AttributeError, NotImplementedError):
                        holder["cache"] = new_cache()
                        forward(ids_all[:, :cached], holder["cache"], 0)
                torch.cuda.synchronize()

            s = time_host(query, reps=3, setup=crop)
            samples.append((q, cached, s))
            print(f"  query {q:5d} on {cached:6d} cached: {s * 1e3:8.2f} ms", flush=True)
        del holder
        torch.cuda.empty_cache()
    from evicctl.manager.costs import CostModel

    cm = CostModel(history=samples)
    fit = [(n, c, s, cm.prefill_s(n, c)) for n, c, s in samples]
    worst = max(abs(p - s) / s for _, _, s, p in fit)
    print(f"  fit a={cm.coef[0]:.3g} s, b={cm.coef[1]:.3g} s/token, c={cm.coef[2]:.3g} s/cached token, "
          f"d={cm.coef[3]:.3g} s/token^2; "
          f"worst relative error {100 * worst:.0f}%", flush=True)
    out = {"samples": samples, "coef": [float(c) for c in cm.coef], "worst_rel_err": worst,
           "fit": [{"new": n, "cached": c, "seconds": s, "predicted": p} for n, c, s, p in fit],
           "cost_model": cm.to_dict(), "model_init_s": init_s, "transformers": transformers.__version__}
    RESULTS["prefill"] = out
    return out


@section("codec decode")
def codec_decode() -> dict:
    """Stored bytes per second of the codecs' decode on the GPU (the cost model's decode_bps)."""
    from evicctl.manager.codecs.codec import get_codec
    from evicctl.manager.kv import KV

    gen = torch.Generator(device="cuda").manual_seed(3)
    keys, values, wq = make_kv(8192, gen)
    kv = KV.full(keys, values, window_queries=wq)
    out = {}
    for family, name in (("quant", "int8"), ("quant-int4", "int4"), ("drop+quant", "knorm@0.5+int8"), ("drop", "snapkv@0.5")):
        codec = get_codec(name)
        stored = codec.encode(kv)
        encode_s = call_s(lambda codec=codec: codec.encode(kv), reps=5)
        decode_s = call_s(lambda codec=codec, stored=stored: codec.decode(stored), reps=7)
        out[family] = {"codec": name, "stored_bytes": stored.nbytes, "decode_s": decode_s, "encode_s": encode_s,
                       "decode_bps": stored.nbytes / decode_s, "encode_raw_bps": kv.nbytes / encode_s}
        print(f"  {name:16s} decode {decode_s * 1e3:7.2f} ms ({stored.nbytes / decode_s / 1e9:6.0f} GB/s stored), "
              f"encode {encode_s * 1e3:7.2f} ms", flush=True)
    RESULTS["codec_decode"] = out
    return out


@section("low-bit")
def low_bit(ceil: dict) -> dict:
    """int3/int2 kernels and whole-context codec paths on Llama-3.1-8B shapes (bf16)."""
    from evicctl.kernels import quant as kq

    from evicctl.manager.codecs.codec import get_codec
    from evicctl.manager.kv import KV

    copy_bps = ceil["d2d_bps"]
    gen = torch.Generator(device="cuda").manual_seed(11)
    kernel_out, codec_out = [], []
    for tokens in (8192, 32768):
        keys, values, wq = make_kv(tokens, gen)
        raw = nbytes(keys)
        for bits in (3, 2):
            for side, quantize, dequantize in (
                ("keys", kq.quantize_keys_layers, kq.dequantize_keys_layers),
                ("values", kq.quantize_values_layers, kq.dequantize_values_layers),
            ):
                parts = quantize(keys if side == "keys" else values, bits, 32)
                stored = nbytes(*parts)
                q_s = time_gpu(lambda f=quantize, x=(keys if side == "keys" else values), b=bits: f(x, b, 32))
                d_s = time_gpu(lambda f=dequantize, p=parts, b=bits: f(*p, b, 32, DTYPE))
                for op, secs in ((f"quantize_{side} int{bits}", q_s), (f"dequantize_{side} int{bits}", d_s)):
                    moved = raw + stored
                    kernel_out.append({"tokens": tokens, "op": op, "kernel_s": secs, "moved_bytes": moved,
                                       "gbps": moved / secs / 1e9, "pct_copy": 100 * moved / secs / copy_bps})
                    print(f"  {tokens:6d} {op:26s} {secs * 1e3:8.3f} ms {moved / secs / 1e9:8.0f} GB/s "
                          f"({100 * moved / secs / copy_bps:4.0f}% of copy)", flush=True)
        kv = KV.full(keys, values, window_queries=wq)
        for name in ("int4", "int3", "int2", "int2-g64", "snapkv@0.5+int4", "snapkv@0.5+int2", "keydiff@0.25+int2"):
            codec = get_codec(name)
            stored = codec.encode(kv)
            encode_s = call_s(lambda c=codec, kv=kv: c.encode(kv), reps=5)
            decode_s = call_s(lambda c=codec, st=stored: c.decode(st), reps=7)
            out_bytes = 2 * raw * codec.kept(tokens) // tokens  # decoded keys + values
            moved = stored.nbytes + out_bytes
            row = {"tokens": tokens, "codec": name, "stored_bytes": stored.nbytes, "encode_s": encode_s,
                   "decode_s": decode_s, "decode_gbps": moved / decode_s / 1e9,
                   "decode_pct_copy": 100 * moved / decode_s / copy_bps, "decode_stored_bps": stored.nbytes / decode_s,
                   "encode_raw_gbps": 2 * raw / encode_s / 1e9}
            codec_out.append(row)
            print(f"  {tokens:6d} {name:18s} decode {decode_s * 1e3:7.2f} ms {row['decode_gbps']:7.0f} GB/s "
                  f"({row['decode_pct_copy']:4.0f}% of copy), encode {encode_s * 1e3:7.2f} ms", flush=True)
        del keys, values, wq, kv, stored
        torch.cuda.empty_cache()
    RESULTS["low_bit"] = {"kernels": kernel_out, "codecs": codec_out}
    return RESULTS["low_bit"]


# ---------------------------------------------------------------- output


def write_costs(out_dir: Path, ceil: dict) -> None:
    pre = RESULTS.get("prefill")
    tier_rows = RESULTS.get("tiers") or []
    if not pre:
        return
    cpu = next((r for r in tier_rows if r["load"].startswith("cpu -> gpu none 32k")), None)
    disk = next((r for r in tier_rows if r["load"].startswith("disk -> gpu none 8k cold")), None)
    decode = RESULTS.get("codec_decode") or {}
    data = {
        "name": "h200",
        "description": "Llama-3.1-8B-shaped KV (bf16, 128 KiB/token) on one H200: HBM, pinned host DRAM, local disk",
        "source": "benchmarks/gpu_bench.py on the lent H200",
        "measured_at": dt.date.today().isoformat(),
        "device": RESULTS["env"].get("gpu"),
        "model": {"name": "Llama-3.1-8B", "layers": LAYERS, "kv_heads": KV_HEADS, "head_dim": HEAD_DIM,
                  "dtype_bytes": 2, "q_heads": Q_HEADS, "window": WINDOW},
        "prefill_samples": [list(s) for s in pre["samples"]],
        "prefill_coef": pre["coef"],
        "cost_model": pre["cost_model"],
        "tiers": [
            {"name": "gpu", "read_bps": ceil["d2d_bps"] / 2, "share": 100},
            {"name": "cpu", "read_bps": cpu["gbps"] * 1e9 if cpu else ceil["h2d_pinned_bps"], "share": 80},
            {"name": "disk", "read_bps": disk["gbps"] * 1e9 if disk else 6e8, "share": 800},
        ],
        "decode_bps": {
            "none": 1e12, "drop": 1e12,
            "quant": decode.get("quant", {}).get("decode_bps", 2.23e11),
            "drop+quant": decode.get("drop+quant", {}).get("decode_bps", 2.23e11),
        },
        "ceilings": ceil,
        "notes": ("gpu read_bps is half the device copy's read+write figure (a GPU hit copies once); cpu is "
                  "GpuTier.load_from(CpuTier) of a 32k-token uncompressed context; disk is GpuTier.load_from("
                  "DiskTier) of an 8k-token file dropped from the page cache first (sha256 verified). "
                  "decode_bps: stored bytes per second of the codecs' decode on the GPU (Triton kernels)."),
    }
    (out_dir / "h200_costs.json").write_text(json.dumps(data, indent=1))


def render(out_dir: Path) -> str:
    from rich.console import Console
    from rich.table import Table

    console = Console(record=True, width=190)
    env = RESULTS["env"]
    console.print(f"[bold]gpu_bench[/] {env.get('date')} {env.get('gpu')} driver {env.get('driver')} torch "
                  f"{env.get('torch')} triton {env.get('triton')} cpus {env.get('cpus')}")
    ceil = RESULTS.get("ceilings") or {}
    if ceil:
        console.print("ceilings: " + ", ".join(f"{k} {v / 1e9:,.1f} G" for k, v in ceil.items()))
    if RESULTS.get("kernels"):
        t = Table(title="kernels (Llama-3.1-8B shapes: 32 layers x 8 KV heads x 128, bf16; one launch for all layers)")
        for c in ("tokens", "op", "ms", "moved MB", "GB/s", "% copy", "x floor", "per-layer ms", "eager ms", "vs eager"):
            t.add_column(c, justify="right" if c not in ("op",) else "left")
        for r in RESULTS["kernels"]:
            t.add_row(str(r["tokens"]), r["op"], f"{r['kernel_s'] * 1e3:.3f}", f"{r['moved_bytes'] / 1e6:,.0f}",
                      f"{r['gbps']:,.0f}", f"{r['pct_copy']:.0f}", f"{r['x_floor']:.2f}",
                      f"{r.get('per_layer_s', float('nan')) * 1e3:.3f}", f"{r.get('eager_s', float('nan')) * 1e3:.2f}",
                      f"{r.get('speedup', float('nan')):.1f}x")
        console.print(t)
    if RESULTS.get("tiers"):
        t = Table(title="tier loads")
        for c in ("load", "MB", "ms", "GB/s", "baseline", "baseline GB/s", "% of baseline", "host path GB/s"):
            t.add_column(c, justify="left" if c in ("load", "baseline") else "right")
        for r in RESULTS["tiers"]:
            t.add_row(r["load"], f"{r['bytes'] / 1e6:,.0f}", f"{r['seconds'] * 1e3:.1f}", f"{r['gbps']:.1f}", r["baseline"],
                      f"{r['baseline_gbps']:.1f}", f"{r['pct']:.0f}", f"{r.get('host_path_gbps', float('nan')):.2f}")
        console.print(t)
        if "sha256_bps" in RESULTS:
            console.print(f"sha256 on one core: {RESULTS['sha256_bps'] / 1e9:.2f} GB/s")
    if RESULTS.get("prefill"):
        t = Table(title="prefill (random-init Llama-3.1-8B shape, bf16, sdpa)")
        for c in ("new tokens", "cached", "ms", "fit ms"):
            t.add_column(c, justify="right")
        for f in RESULTS["prefill"]["fit"]:
            t.add_row(str(f["new"]), str(f["cached"]), f"{f['seconds'] * 1e3:.1f}", f"{f['predicted'] * 1e3:.1f}")
        console.print(t)
        a, b, c = RESULTS["prefill"]["coef"]
        console.print(f"prefill_s = {a:.3g} + {b:.3g}*new + {c:.3g}*new*(new+cached)")
    low = RESULTS.get("low_bit") or {}
    if low.get("kernels"):
        t = Table(title="low-bit kernels (Llama-3.1-8B shapes, bf16, one launch for all 32 layers)")
        for c in ("tokens", "op", "ms", "moved MB", "GB/s", "% copy"):
            t.add_column(c, justify="left" if c == "op" else "right")
        for r in low["kernels"]:
            t.add_row(str(r["tokens"]), r["op"], f"{r['kernel_s'] * 1e3:.3f}", f"{r['moved_bytes'] / 1e6:,.0f}",
                      f"{r['gbps']:,.0f}", f"{r['pct_copy']:.0f}")
        console.print(t)
    if low.get("codecs"):
        t = Table(title="whole-context codec path on the GPU (encode / decode of every layer, residual included)")
        for c in ("tokens", "codec", "stored MB", "encode ms", "decode ms", "decode GB/s moved", "% copy"):
            t.add_column(c, justify="left" if c == "codec" else "right")
        for r in low["codecs"]:
            t.add_row(str(r["tokens"]), r["codec"], f"{r['stored_bytes'] / 1e6:,.1f}", f"{r['encode_s'] * 1e3:.2f}",
                      f"{r['decode_s'] * 1e3:.2f}", f"{r['decode_gbps']:,.0f}", f"{r['decode_pct_copy']:.0f}")
        console.print(t)
    if RESULTS.get("codec_decode"):
        console.print("codec decode on GPU: " + ", ".join(
            f"{v['codec']} {v['decode_bps'] / 1e9:,.0f} GB/s" for v in RESULTS["codec_decode"].values()))
    if RESULTS["errors"]:
        console.print(f"[red]errors in: {', '.join(RESULTS['errors'])}[/]")
    text = console.export_text()
    (out_dir / "gpu_bench.txt").write_text(text)
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench_out"))
    parser.add_argument("--skip", default="", help="comma list of sections to skip: tuning,kernels,tiers,decode,lowbit,prefill")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_bench needs CUDA", file=sys.stderr)
        return 2
    skip = set(filter(None, args.skip.split(",")))
    args.out.mkdir(parents=True, exist_ok=True)
    import triton

    props = torch.cuda.get_device_properties(0)
    RESULTS["env"] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "gpu": props.name,
        "sms": props.multi_processor_count, "gpu_mem_gib": props.total_memory / GIB,
        "torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda,
        "python": platform.python_version(), "cpus": os.cpu_count(),
        "driver": os.popen("nvidia-smi --query-gpu=driver_version --format=csv,noheader").read().strip(),
    }
    ceil = ceilings()
    if ceil is None:
        return 1

    def stop(signum, frame):  # `timeout` sends SIGTERM: still write what was measured
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    steps = {
        "tuning": lambda: tuning_sweep(ceil),
        "kernels": lambda: kernels(ceil),
        "tiers": lambda: _with_tmp(lambda tmp: tiers(ceil, tmp)),
        "decode": codec_decode,
        "lowbit": lambda: low_bit(ceil),
        "prefill": lambda: prefill(ceil),
    }
    try:
        for name, step in steps.items():
            if name not in skip:
                step()
                (args.out / "gpu_bench.json").write_text(json.dumps(RESULTS, indent=1, default=str))
    except KeyboardInterrupt:
        RESULTS["errors"]["interrupted"] = "stopped by a signal; later sections did not run"
    finally:
        write_costs(args.out, ceil)
        (args.out / "gpu_bench.json").write_text(json.dumps(RESULTS, indent=1, default=str))
        print(render(args.out))
    return 1 if RESULTS["errors"] else 0


def _with_tmp(fn):
    with tempfile.TemporaryDirectory(dir=os.environ.get("GPU_BENCH_TMP")) as tmp:
        return fn(Path(tmp))


if __name__ == "__main__":
    sys.exit(main())
