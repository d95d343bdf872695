"""DiskTier read throughput vs ``dd`` of the same file, cold and warm page cache.

For each SmolLM2-135M-shaped context (fp32, 30 layers, 3 KV heads, head_dim 64) in a few
codecs, the file the DiskTier wrote is read three ways, each --repeats times (best time):

- ``dd if=FILE of=/dev/null bs=4M`` (the baseline: the device / page cache alone);
- a plain Python ``readinto`` of the file (what any loader pays at least);
- ``DiskTier.get`` (read + checksum + safetensors parse into tensors that view the buffer),
  twice: verifying the ``sha256-tree:`` checksum the tier writes (chunks hashed on several
  threads), and the same file adopted with a plain sha256 (what files written before the
  tree checksum carry, hashed on one thread): the before/after of the tree checksum.

Cold: before each read the file's pages are dropped from the page cache with
``posix_fadvise(POSIX_FADV_DONTNEED)`` (no root needed; clean pages of the file only).
Warm: the file was just read and stays cached. Throughput is in GB/s of file bytes.

    .venv/bin/python benchmarks/disk_bench.py [--dir PATH] [--tokens 1024 4096] [--repeats 5]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from codec_bench import smollm2_kv  # noqa: E402

from evicctl.manager.codecs.codec import get_codec  # noqa: E402
from evicctl.manager.tiers.checksum import HASH_WORKERS  # noqa: E402
from evicctl.manager.tiers.disk import DiskTier  # noqa: E402


def drop_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def best_s(fn, path: Path, cold: bool, repeats: int) -> float:
    fn()  # warm-up (and, for warm runs, fills the cache)
    times = []
    for _ in range(repeats):
        if cold:
            drop_cache(path)
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def dd(path: Path) -> None:
    subprocess.run(["dd", f"if={path}", "of=/dev/null", "bs=4M"], check=True, capture_output=True)


def readinto(path: Path) -> None:
    with path.open("rb", buffering=0) as f:
        buf = torch.empty(os.fstat(f.fileno()).st_size, dtype=torch.uint8)
        f.readinto(memoryview(buf.numpy()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=None, help="directory for the tier (default: a temp dir)")
    parser.add_argument("--tokens", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--codecs", nargs="+", default=["none", "int8", "knorm@0.5+int8"])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    console = Console(width=160)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        tier = DiskTier(tmp, capacity_bytes=1 << 40)
        plain_tier = DiskTier(tmp, capacity_bytes=1 << 40)  # reads the same files, plain sha256
        data = os.urandom(64 << 20)
        start = time.perf_counter()
        hashlib.sha256(data).hexdigest()
        sha_gbps = len(data) / (time.perf_counter() - start) / 1e9
        table = Table(title=f"DiskTier.get vs dd (GB/s of file bytes, best of {args.repeats}); "
                      f"sha256 alone {sha_gbps:.2f} GB/s; dir {tmp}")  # fmt: skip
        cols = ("context", "file MB", "cache", "dd", "readinto", "get sha256", "get tree", "tree / sha256", "get / dd")
        for col in cols:
            table.add_column(col, justify="left" if col in ("context", "cache") else "right")
        for tokens in args.tokens:
            kv = smollm2_kv(tokens)
            for name in args.codecs:
                ctx = f"{name}-{tokens}"
                path = Path(tier.put(ctx, get_codec(name).encode(kv)).location)
                size = path.stat().st_size
                plain = hashlib.sha256(path.read_bytes()).hexdigest()
                plain_tier.adopt(ctx, str(path), plain)  # the same file, its plain sha256
                for cold in (True, False):
                    dd_s = best_s(lambda p=path: dd(p), path, cold, args.repeats)
                    read_s = best_s(lambda p=path: readinto(p), path, cold, args.repeats)
                    plain_s = best_s(lambda c=ctx: plain_tier.get(c), path, cold, args.repeats)
                    get_s = best_s(lambda c=ctx: tier.get(c), path, cold, args.repeats)
                    table.add_row(
                        f"{tokens} tok {name}", f"{size / 1e6:.1f}", "cold" if cold else "warm",
                        f"{size / dd_s / 1e9:.2f}", f"{size / read_s / 1e9:.2f}",
                        f"{size / plain_s / 1e9:.2f}", f"{size / get_s / 1e9:.2f}",
                        f"{plain_s / get_s:.2f}", f"{dd_s / get_s:.2f}",
                    )  # fmt: skip
                tier.delete(ctx)
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        console.print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {HASH_WORKERS} hash lanes, "
                      f"load average {load}")  # fmt: skip
        console.print(table)


if __name__ == "__main__":
    main()
