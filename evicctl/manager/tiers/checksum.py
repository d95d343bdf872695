"""Checksums of stored KV files: plain sha256, and the ``sha256-tree:`` form.

One sha256 stream is sequential: ~1.4 GB/s on one core of an H200 host, slower than its
disk, so verifying a file would cap every disk load at that speed. The tree form is the
sha256 of the concatenated sha256 digests of the file's consecutive TREE_CHUNK_BYTES
chunks (the last may be short; an empty file has no chunk): its chunks are hashed on
several threads at once. A checksum names its form by its prefix; plain sha256 is bare
hex (what older files carry), so both verify.

``TreeHasher`` takes the bytes piece by piece as they are read: pieces of chunk c are
hashed in order on lane c % lanes (one thread each), so a chunk is hashed while it is
still being read and different chunks are hashed at once. ``HashLanes`` holds the threads;
hashlib releases the GIL on large buffers, so the lanes and the reading thread overlap.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

TREE_PREFIX = "sha256-tree:"
TREE_CHUNK_BYTES = 32 << 20
HASH_WORKERS = min(8, os.cpu_count() or 1)


def is_tree(checksum: str | None) -> bool:
    return checksum is not None and checksum.startswith(TREE_PREFIX)


def chunk_digest(chunk) -> bytes:
    """One TREE_CHUNK_BYTES chunk's digest (the last chunk may be short)."""
    return hashlib.sha256(chunk).digest()


def tree_from_digests(digests) -> str:
    """The TREE_PREFIX checksum from the chunks' digests, in file order."""
    return TREE_PREFIX + hashlib.sha256(b"".join(digests)).hexdigest()


def tree_checksum(data, *, workers: int = HASH_WORKERS) -> str:
    """TREE_PREFIX checksum of bytes (or a path): chunk digests computed on `workers` threads."""
    if isinstance(data, (str, Path)):
        import mmap

        with open(data, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:  # mmap refuses an empty file
                return tree_checksum(b"", workers=workers)
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                return tree_checksum(memoryview(mm), workers=workers)
    view = memoryview(data).cast("B")
    chunks = [view[i : i + TREE_CHUNK_BYTES] for i in range(0, len(view), TREE_CHUNK_BYTES)]
    if workers <= 1 or len(chunks) <= 1:
        digests = [chunk_digest(c) for c in chunks]
    else:
        with ThreadPoolExecutor(min(workers, len(chunks))) as pool:  # hashlib releases the GIL
            digests = list(pool.map(chunk_digest, chunks))
    return tree_from_digests(digests)


class HashLanes:
    """`count` single-thread executors (lanes); work submitted to one lane runs in order."""

    def __init__(self, count: int = HASH_WORKERS, *, name: str = "evicctl-hash") -> None:
        self.count = max(1, count)
        self._name = name
        self._lanes: list[ThreadPoolExecutor] | None = None
        self._lock = threading.Lock()

    def submit(self, lane: int, fn: Callable, *args) -> Future:
        with self._lock:
            if self._lanes is None:  # threads start on first use
                self._lanes = [
                    ThreadPoolExecutor(1, thread_name_prefix=f"{self._name}-{i}") for i in range(self.count)
                ]
            executor = self._lanes[lane % self.count]
        return executor.submit(fn, *args)

    def close(self) -> None:
        with self._lock:
            lanes, self._lanes = self._lanes, None
        for executor in lanes or ():
            executor.shutdown(wait=True)


class TreeHasher:
    """The TREE_PREFIX checksum of bytes fed in order by ``update`` (pieces of any size).

    A fed buffer must stay unchanged until ``hexdigest`` returns (it is hashed later)."""

    def __init__(self, lanes: HashLanes) -> None:
        self._lanes = lanes
        self._offset = 0
        self._hashers: list = []  # one sha256 per chunk
        self._last: dict[int, Future] = {}  # the latest piece submitted to each lane

    def update(self, data) -> None:
        view = memoryview(data).cast("B")
        pos = 0
        while pos < len(view):
            chunk, within = divmod(self._offset, TREE_CHUNK_BYTES)
            if within == 0:
                self._hashers.append(hashlib.sha256())
            n = min(len(view) - pos, TREE_CHUNK_BYTES - within)
            lane = chunk % self._lanes.count
            self._last[lane] = self._lanes.submit(lane, self._hashers[chunk].update, view[pos : pos + n])
            pos += n
            self._offset += n

    def hexdigest(self) -> str:
        for future in self._last.values():  # a lane's pieces run in order: its last is its end
            future.result()
        return TREE_PREFIX + hashlib.sha256(b"".join(h.digest() for h in self._hashers)).hexdigest()


class PlainHasher:
    """sha256 of bytes fed in order by ``update``, hashed on one lane (overlapping the reads)."""

    def __init__(self, lanes: HashLanes) -> None:
        self._lanes = lanes
        self._hash = hashlib.sha256()
        self._last: Future | None = None

    def update(self, data) -> None:
        self._last = self._lanes.submit(0, self._hash.update, memoryview(data).cast("B"))

    def hexdigest(self) -> str:
        if self._last is not None:
            self._last.result()
        return self._hash.hexdigest()


def hasher_for(checksum: str | None, lanes: HashLanes) -> TreeHasher | PlainHasher:
    """The hasher that computes a checksum of `checksum`'s form (tree or plain sha256)."""
    return TreeHasher(lanes) if is_tree(checksum) else PlainHasher(lanes)


__all__ = [
    "HASH_WORKERS",
    "TREE_CHUNK_BYTES",
    "TREE_PREFIX",
    "HashLanes",
    "PlainHasher",
    "TreeHasher",
    "hasher_for",
    "is_tree",
    "tree_checksum",
]
