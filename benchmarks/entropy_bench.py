"""Lossless entropy coding of stored KV for the disk and remote tiers: bytes saved vs time.

Real KV: the packaged SmolLM2-135M (fp32) prefills a SQuAD context of about --tokens tokens
(the engine's own path, evicctl.engine.hf.prefill_context, window queries included). Each
codec encodes it and the result is serialized exactly as the disk and redis tiers store it
(tier.serialize: one safetensors blob). Each method then compresses that blob:

- ``zstd-N``: zstandard at level N over the whole blob, one frame, one thread;
- ``zstd-3 x2``: the blob cut in 4 MiB frames, decompressed on two threads (this machine's
  cores; the library releases the GIL), the most a parallel reader could get here;
- ``lz4``: lz4.frame at its default level (only when the lz4 package is importable);
- ``shuffle+zstd-3``: the KVComp idea, before zstd: every tensor's bytes regrouped so that
  correlated bytes sit together (multi-byte dtypes split into byte planes; code tensors
  [1, H, T, B] transposed to [1, H, B, T], so one packed channel's codes over the tokens
  are contiguous); the inverse runs in the decompress time;
- ``bitplane+zstd-3``: as shuffle, and the transposed codes split further into their 8 bit
  planes (each plane of one channel is a run of mostly-equal bits where codes are similar).

Columns: stored MB (the blob, = Stored.nbytes + the safetensors header), compressed MB,
saving (% of stored bytes), compress and decompress GB/s (stored bytes per second, in memory;
the decompress side includes any inverse transform), and cold read GB/s: the compressed file
read with the page cache dropped (posix_fadvise), decompressed and parsed into tensors, what
a get of a tier holding compressed files would take at least (no checksum in any row).
Baseline in the same run, per codec (its header row): the plain blob written to a file (write
+ fsync) and read back cold and parsed, as the disk tier does. Every time is the best of
--repeats runs after one warm-up (the machine is shared). The transforms are numpy (the
bit-plane one is slow for that reason; its sizes are what matter).

The last table is the order-0 entropy of the quantized codes (bits per code, over the whole
context and per (head, channel) over the tokens): the ceiling of an entropy coder with one
code table per channel and no model of the values. Per channel it is biased low by about
(2**bits - 1) / (2 N ln 2) bits for N tokens (int8 at 1k tokens: ~0.17 bit), so the int8
ceiling is optimistic.

    .venv/bin/python -P benchmarks/entropy_bench.py [--tokens 1024 4096] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from evicctl.manager.codecs.codec import Stored, get_codec
from evicctl.manager.kv import KV
from evicctl.manager.tiers import st_format
from evicctl.manager.tiers.disk import stored_from_buffer
from evicctl.manager.tiers.tier import serialize

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ (never the checkout root: -P)
from disk_bench import drop_cache  # noqa: E402  (fdatasync + fadvise DONTNEED)

CODECS = (
    "none",
    "int8",
    "int4",
    "int3",
    "int2",
    "knorm@0.5+int8",
    "knorm@0.5+int4",
    "snapkv@0.5+int2",
)
FRAME_BYTES = 4 << 20  # the x2 method's frames
EXIT_MISSING = 3  # zstandard, the packaged model or its data not installed


def real_kv(tokens: int) -> KV:
    """The packaged model's KV of one SQuAD context of about `tokens` tokens."""
    from evicctl.config import default_cache_dir
    from evicctl.engine.data import load_contexts
    from evicctl.engine.hf import prefill_context
    from evicctl.engine.model import load_model

    model, tokenizer = load_model(default_cache_dir())
    context = load_contexts(tokenizer, 1, target_tokens=tokens, hotpot_fraction=0.0, seed=0)[0]
    ids = tokenizer(context.text, return_tensors="pt").input_ids
    with torch.no_grad():
        kv, _ = prefill_context(model, ids)
    return kv


# ---------------------------------------------------------------- transforms


def _regroup(blob: bytes, *, bitplane: bool, inverse: bool) -> bytes:
    """The shuffle / bit-plane transform of every tensor of a safetensors blob, in place
    (sizes unchanged, header untouched); `inverse` undoes it."""
    header, base = st_format.split(blob)
    specs, _meta = st_format.parse_header(header)
    out = bytearray(blob)
    for spec in specs.values():
        start, end = (base + int(o) for o in spec["data_offsets"])
        raw = np.frombuffer(blob, np.uint8, end - start, start)
        itemsize = st_format.DTYPES[spec["dtype"]].itemsize
        if itemsize > 1:  # byte planes
            n = raw.size // itemsize
            moved = raw.reshape(itemsize, n).T if inverse else raw.reshape(n, itemsize).T
        else:  # codes [1, H, T, B]: channel-major
            _one, heads, tokens, width = spec["shape"]
            if inverse:
                if bitplane:
                    bits = np.unpackbits(raw.reshape(8, -1), axis=1)[:, : raw.size]
                    raw = np.packbits(np.ascontiguousarray(bits.T), axis=1).reshape(-1)
                moved = raw.reshape(heads, width, tokens).transpose(0, 2, 1)
            else:
                moved = raw.reshape(heads, tokens, width).transpose(0, 2, 1)
                if bitplane:
                    bits = np.unpackbits(
                        np.ascontiguousarray(moved).reshape(-1, 1), axis=1
                    )  # [n, 8]
                    moved = np.packbits(np.ascontiguousarray(bits.T), axis=1)
        out[start:end] = np.ascontiguousarray(moved).tobytes()
    return bytes(out)


# ---------------------------------------------------------------- methods


def _zstd(level: int):
    import zstandard

    cctx, dctx = zstandard.ZstdCompressor(level=level), zstandard.ZstdDecompressor()
    return cctx.compress, dctx.decompress


def _zstd_frames(level: int, pool: ThreadPoolExecutor):
    import zstandard

    cctx = zstandard.ZstdCompressor(level=level)

    def compress(blob: bytes) -> list[bytes]:
        return [cctx.compress(blob[i : i + FRAME_BYTES]) for i in range(0, len(blob), FRAME_BYTES)]

    def decompress(frames: list[bytes]) -> bytes:  # a decompressor is not thread-safe: one a call
        return b"".join(pool.map(lambda f: zstandard.ZstdDecompressor().decompress(f), frames))

    return compress, decompress


def _transformed(level: int, *, bitplane: bool):
    compress, decompress = _zstd(level)
    return (
        lambda blob: compress(_regroup(blob, bitplane=bitplane, inverse=False)),
        lambda packed: _regroup(decompress(packed), bitplane=bitplane, inverse=True),
    )


def methods(pool: ThreadPoolExecutor) -> dict:
    out = {f"zstd-{level}": _zstd(level) for level in (1, 3, 9)}
    out["zstd-3 x2"] = _zstd_frames(3, pool)
    try:
        import lz4.frame

        out["lz4"] = (lz4.frame.compress, lz4.frame.decompress)
    except ImportError:
        pass
    out["shuffle+zstd-3"] = _transformed(3, bitplane=False)
    out["bitplane+zstd-3"] = _transformed(3, bitplane=True)
    return out


def _size(packed) -> int:
    return sum(map(len, packed)) if isinstance(packed, list) else len(packed)


# ---------------------------------------------------------------- timing


def best_s(fn, repeats: int, before=None) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if before is not None:
            before()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def write_file(path: Path, blob: bytes) -> None:
    with path.open("wb") as f:
        f.write(blob)
        f.flush()
        os.fsync(f.fileno())


def read_file(path: Path) -> Stored:
    with path.open("rb", buffering=0) as f:
        buf = torch.empty(os.fstat(f.fileno()).st_size, dtype=torch.uint8)
        f.readinto(memoryview(buf.numpy()))
    return stored_from_buffer(buf)


def baseline(blob: bytes, folder: Path, repeats: int) -> tuple[float, float]:
    """(write GB/s, cold read GB/s) of the plain blob through a file."""
    path = folder / "plain.safetensors"
    write_s = best_s(lambda: write_file(path, blob), repeats)
    read_s = best_s(lambda: read_file(path), repeats, before=lambda: drop_cache(path))
    return len(blob) / write_s / 1e9, len(blob) / read_s / 1e9


def read_packed(path: Path, decompress) -> Stored:
    """What a tier holding compressed files would do on a get: read, decompress, parse."""
    with path.open("rb", buffering=0) as f:
        packed = f.read()
    with warnings.catch_warnings():  # a read-only buffer: nothing writes into a stored tensor
        warnings.simplefilter("ignore", UserWarning)
        return stored_from_buffer(torch.frombuffer(decompress(packed), dtype=torch.uint8))


def cold_read_gbps(blob: bytes, packed: bytes, decompress, folder: Path, repeats: int) -> float:
    """Stored bytes per second of a cold read of the compressed file, decompressed and parsed."""
    path = folder / "packed.bin"
    write_file(path, packed)
    read_s = best_s(lambda: read_packed(path, decompress), repeats, before=lambda: drop_cache(path))
    return len(blob) / read_s / 1e9


# ---------------------------------------------------------------- code entropy


def _entropy_bits(codes: np.ndarray, symbols: int, axis: int | None) -> float:
    """Mean order-0 entropy (bits per code) of `codes`, over all of it or along `axis` per slice."""
    if axis is None:
        counts = np.bincount(codes.reshape(-1), minlength=symbols)[None]
    else:
        moved = np.moveaxis(codes, axis, -1).reshape(-1, codes.shape[axis])
        counts = np.stack([np.bincount(row, minlength=symbols) for row in moved])
    p = counts / counts.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.nansum(np.where(p > 0, p * np.log2(p), 0.0), axis=1)
    return float(h.mean())


def unpack_codes(codes: torch.Tensor, bits: int) -> np.ndarray:
    """[1, H, T, D*bits/8] packed uint8 -> [H, T, D] codes (int3: its two planes joined)."""
    c = codes.numpy()[0].astype(np.uint8)
    if bits == 8:
        return c
    if bits == 3:
        d = c.shape[-1] * 8 // 3
        low = unpack_codes(torch.from_numpy(c[None, ..., : d // 4]), 2)
        high = unpack_codes(torch.from_numpy(c[None, ..., d // 4 :]), 1) if d // 8 else 0
        return low | (high << 2)
    per = 8 // bits
    parts = [(c >> (bits * j)) & ((1 << bits) - 1) for j in range(per)]
    return np.stack(parts, axis=-1).reshape(*c.shape[:-1], c.shape[-1] * per)


def code_entropy(stored: Stored, bits: int) -> dict[str, tuple[float, float]]:
    """side -> (bits per code over the context, mean per (head, channel)), all layers."""
    out = {}
    for side in ("k", "v"):
        codes = [
            unpack_codes(t, bits)
            for n, t in sorted(stored.tensors.items())
            if n.startswith(side) and n.endswith(".codes")
        ]
        whole = np.mean([_entropy_bits(c, 1 << bits, None) for c in codes])
        per_channel = np.mean([_entropy_bits(c, 1 << bits, 1) for c in codes])  # over tokens
        out[side] = (float(whole), float(per_channel))
    return out


# ---------------------------------------------------------------- the run


def bench(
    kv: KV, codecs: list[str], repeats: int, folder: Path, pool: ThreadPoolExecutor
) -> tuple[Table, Table]:
    table = Table(
        title=f"entropy coding of stored KV, SmolLM2-135M, {kv.tokens} tokens, fp32 ({kv.nbytes / 1e6:.1f} MB raw)"
    )
    for col in (
        "codec / method",
        "stored MB",
        "compressed MB",
        "saving",
        "compress GB/s",
        "decompress GB/s",
        "cold read GB/s",
    ):
        table.add_column(col, justify="left" if col == "codec / method" else "right")
    entropy = Table(title=f"order-0 entropy of the codes, {kv.tokens} tokens (bits per code)")
    for col in (
        "codec",
        "keys: context",
        "keys: per channel",
        "values: context",
        "values: per channel",
        "ceiling on codes",
    ):
        entropy.add_column(col, justify="left" if col == "codec" else "right")
    chosen = methods(pool)
    for name in codecs:
        codec = get_codec(name)
        stored = codec.encode(kv)
        blob = serialize("ctx", stored)
        write_gbps, read_gbps = baseline(blob, folder, repeats)
        table.add_row(f"[bold]{name}[/]", f"{len(blob) / 1e6:.2f}", "", "",
                      f"plain write {write_gbps:.2f}", "", f"plain {read_gbps:.2f}")  # fmt: skip
        for method, (compress, decompress) in chosen.items():
            packed = compress(blob)
            restored = decompress(packed)
            if restored != blob:
                raise AssertionError(f"{method} did not round-trip {name}")
            comp_s = best_s(lambda c=compress, b=blob: c(b), repeats)
            dec_s = best_s(lambda d=decompress, p=packed: d(p), repeats)
            size = _size(packed)
            cold = (
                ""
                if isinstance(packed, list)
                else f"{cold_read_gbps(blob, packed, decompress, folder, repeats):.2f}"
            )
            table.add_row(f"  {method}", "", f"{size / 1e6:.2f}", f"{100 * (1 - size / len(blob)):.1f}%",
                          f"{len(blob) / comp_s / 1e9:.2f}", f"{len(blob) / dec_s / 1e9:.2f}", cold)  # fmt: skip
        bits = codec.bits
        if bits:
            h = code_entropy(stored, bits)
            best_channel = (h["k"][1] + h["v"][1]) / 2
            entropy.add_row(name, f"{h['k'][0]:.3f}", f"{h['k'][1]:.3f}", f"{h['v'][0]:.3f}", f"{h['v'][1]:.3f}",
                            f"{100 * (1 - best_channel / bits):.1f}% of code bytes")  # fmt: skip
        table.add_section()
    return table, entropy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--codecs", nargs="+", default=list(CODECS))
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="folder for the baseline's file (default: a temp dir)",
    )
    args = parser.parse_args()
    try:
        import zstandard  # noqa: F401
    except ImportError:
        print("entropy_bench: needs zstandard (`make install` installs it)", file=sys.stderr)
        sys.exit(EXIT_MISSING)
    torch.set_num_threads(1)
    console = Console(width=140)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp, ThreadPoolExecutor(2) as pool:
        for tokens in args.tokens:
            try:
                kv = real_kv(tokens)
            except Exception as exc:  # the model or data package missing: one line, no traceback
                print(f"entropy_bench: no real KV ({type(exc).__name__}: {exc})", file=sys.stderr)
                sys.exit(EXIT_MISSING)
            table, entropy = bench(kv, args.codecs, args.repeats, Path(tmp), pool)
            console.print(table)
            console.print(entropy)
    print(f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
