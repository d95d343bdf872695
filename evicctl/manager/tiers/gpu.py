"""The GPU tier: stored KVs held as CUDA tensors, loaded from host memory and from disk.

- ``put`` copies a Stored's tensors into device memory on the tier's own CUDA stream:
  pinned host tensors (what CpuTier holds) go by one async copy each; pageable ones through
  a ring of pinned staging buffers (a host memcpy into buffer i+1 overlaps the device copy
  of buffer i); CUDA tensors by a device copy.
- ``load_file`` reads a DiskTier safetensors file straight into device memory: chunks are
  read into the pinned ring, hashed (the disk tier's checksum: plain or tree sha256) on a second thread
  and copied to the device while the next chunk is read, so the load runs at the slowest
  of read, hash and copy instead of their sum. The tensors are views of one device buffer.
  One sha256 stream is sequential (~1.4 GB/s on one core of the H200 host, below its
  disk); the ``sha256-tree:`` checksum the disk tier writes is verified on several cores at once.
- ``prefetch(context_id, source)`` starts such a load in the background (the next
  request's context); ``get`` waits for whatever is still in flight, so a prefetch that
  finished costs nothing at lookup.
- Bandwidths come from these real transfers: every load from the host folds into this
  tier's write_bps and into the source tier's read_bps (``observe``), so the manager's
  estimate of a cpu or disk hit is what loads to this GPU actually achieved. read_bps is
  the device's own copy bandwidth (a GPU hit moves nothing over a bus).

Importing this module neither imports Triton nor touches CUDA; the stream and the staging
buffers are made on first use.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from evicctl.errors import CorruptDataError, UsageError
from evicctl.manager.codecs.codec import Stored, from_safetensors_dict
from evicctl.manager.tiers import st_format

# the "sha256-tree:" checksum the disk tier writes (sha256 of the 32 MiB chunks' digests),
# verified here on HASH_WORKERS threads as the chunks stream in
from evicctl.manager.tiers.checksum import (
    HASH_WORKERS,
    TREE_CHUNK_BYTES,
    TREE_PREFIX,
    chunk_digest,
    tree_checksum,
    tree_from_digests,
)
from evicctl.manager.tiers.tier import Entry, PutResult, Tier

# before probe(): an H200's measured copy bandwidth (read) and pinned H2D (write), B/s
DEFAULT_GPU_BPS = (4.2e12, 5.5e10)
STAGING_CHUNK_BYTES = 32 << 20
STAGING_BUFFERS = 4
PROBE_H2D_BYTES = 64 << 20
PROBE_D2D_BYTES = 256 << 20



@dataclass
class _Pending:
    """A load still in flight: a background future and/or the copy stream's event."""

    future: Future | None = None
    event: torch.cuda.Event | None = None

    def wait(self) -> None:
        if self.future is not None:
            self.future.result()  # re-raises a failed load (e.g. CorruptDataError)
        if self.event is not None:
            self.event.synchronize()


class _StagingRing:
    """Pinned host buffers reused round-robin; a buffer is free once its copy's event fired."""

    def __init__(self, chunk_bytes: int, count: int) -> None:
        self.chunk_bytes = chunk_bytes
        self.buffers = [torch.empty(chunk_bytes, dtype=torch.uint8, pin_memory=True) for _ in range(count)]
        self.events: list[torch.cuda.Event | None] = [None] * count
        self.hashed: list[Future | None] = [None] * count
        self.next = 0
        self.lock = threading.Lock()  # one user at a time (loads of two threads would share slots)

    def take(self) -> tuple[int, torch.Tensor]:
        i = self.next
        self.next = (i + 1) % len(self.buffers)
        if self.events[i] is not None:
            self.events[i].synchronize()
        if self.hashed[i] is not None:
            self.hashed[i].result()
        self.events[i] = self.hashed[i] = None
        return i, self.buffers[i]


class GpuTier(Tier):
    backend = "gpu"

    def __init__(
        self,
        *,
        capacity_bytes: int,
        name: str = "gpu",
        rank: int = 0,
        device: torch.device | str | None = None,
        chunk_bytes: int = STAGING_CHUNK_BYTES,
        staging_buffers: int = STAGING_BUFFERS,
    ) -> None:
        super().__init__(name=name, rank=rank, capacity_bytes=capacity_bytes)
        self.device = torch.device(device if device is not None else "cuda")
        if self.device.type != "cuda":
            raise UsageError(f"tier {name}: the gpu tier needs a CUDA device; got {self.device}")
        self.read_bps, self.write_bps = DEFAULT_GPU_BPS
        self._chunk_bytes, self._n_staging = chunk_bytes, staging_buffers
        self._held: dict[str, Stored] = {}
        self._pending: dict[str, _Pending] = {}
        self._stream: torch.cuda.Stream | None = None
        self._ring: _StagingRing | None = None
        self._hasher: ThreadPoolExecutor | None = None
        self._loader: ThreadPoolExecutor | None = None
        self._tree_ring: _StagingRing | None = None
        self._tree_pool: ThreadPoolExecutor | None = None

    # ------------------------------------------------------------ lazy CUDA state

    def _copy_stream(self) -> torch.cuda.Stream:
        if self._stream is None:
            self._stream = torch.cuda.Stream(device=self.device)
        return self._stream

    def _staging(self) -> _StagingRing:
        if self._ring is None:
            self._ring = _StagingRing(self._chunk_bytes, self._n_staging)
            self._hasher = ThreadPoolExecutor(1, thread_name_prefix="evicctl-gpu-hash")
            self._loader = ThreadPoolExecutor(1, thread_name_prefix="evicctl-gpu-load")
        return self._ring

    # ------------------------------------------------------------ host -> device

    def _copy_in(self, stored: Stored) -> tuple[Stored, torch.cuda.Event]:
        """Launch the copies of every tensor onto the device; returns (device Stored, done event).

        Destination memory is allocated on the caller's current stream (whose pool owns it)
        and the copy stream waits for that stream first, so the copies never race with the
        allocator or with the kernels that produced a CUDA source."""
        stream = self._copy_stream()
        current = torch.cuda.current_stream(self.device)
        dst = {name: torch.empty(t.shape, dtype=t.dtype, device=self.device) for name, t in stored.tensors.items()}
        stream.wait_stream(current)
        with torch.cuda.stream(stream):
            for name, src in stored.tensors.items():
                if src.is_cuda or src.is_pinned():
                    dst[name].copy_(src, non_blocking=True)
                else:
                    self._staged_copy(src, dst[name], stream)
        done = torch.cuda.Event()
        done.record(stream)
        return Stored(stored.codec, dst, dict(stored.meta)), done

    def _staged_copy(self, src: torch.Tensor, dst: torch.Tensor, stream: torch.cuda.Stream) -> None:
        """Pageable host -> device through the pinned ring (a pageable async copy would not be async)."""
        src_bytes = src.contiguous().reshape(-1).view(torch.uint8)  # [N]
        dst_bytes = dst.view(-1).view(torch.uint8)
        ring = self._staging()
        with ring.lock:
            for start in range(0, src_bytes.numel(), ring.chunk_bytes):
                end = min(start + ring.chunk_bytes, src_bytes.numel())
                i, buf = ring.take()
                buf[: end - start].copy_(src_bytes[start:end])
                dst_bytes[start:end].copy_(buf[: end - start], non_blocking=True)
                ring.events[i] = torch.cuda.Event()
                ring.events[i].record(stream)

    def _hold(self, context_id: str, stored: Stored, pending: _Pending | None) -> None:
        with self._lock:
            self._held[context_id] = stored
            self._entries[context_id] = Entry(stored.nbytes)
            if pending is None:
                self._pending.pop(context_id, None)
            else:
                self._pending[context_id] = pending

    def _host_bytes(self, stored: Stored) -> int:
        return sum(t.numel() * t.element_size() for t in stored.tensors.values() if not t.is_cuda)

    # ------------------------------------------------------------ the interface

    def put(self, context_id: str, stored: Stored) -> PutResult:
        """Copy a stored KV into device memory and wait for it (seconds = the copy's time)."""
        self._settle(context_id)
        start = time.perf_counter()
        on_device, done = self._copy_in(stored)
        done.synchronize()
        seconds = time.perf_counter() - start
        self._hold(context_id, on_device, None)
        self.observe("write", self._host_bytes(stored), seconds)
        return PutResult(None, None, seconds)

    def get(self, context_id: str) -> tuple[Stored, float]:
        """(Stored of CUDA tensors, seconds spent waiting for an in-flight load)."""
        start = time.perf_counter()
        with self._lock:
            pending = self._pending.get(context_id)
        if pending is not None:
            try:
                pending.wait()
            except BaseException:
                self.delete(context_id)
                raise
            with self._lock:
                if self._pending.get(context_id) is pending:
                    del self._pending[context_id]
        with self._lock:
            stored = self._held.get(context_id)
        if stored is None:
            raise KeyError(context_id)
        return stored, time.perf_counter() - start

    def delete(self, context_id: str) -> None:
        with self._lock:
            pending = self._pending.pop(context_id, None)
        if pending is not None:  # never free memory a copy is still writing
            with contextlib.suppress(Exception):  # a failed load holds nothing to free
                pending.wait()
        with self._lock:
            self._held.pop(context_id, None)
            self._entries.pop(context_id, None)

    def _settle(self, context_id: str) -> None:
        """Finish (or fail) a load in flight for this id before replacing it."""
        with self._lock:
            pending = self._pending.pop(context_id, None)
        if pending is not None:
            with contextlib.suppress(Exception):  # replaced anyway
                pending.wait()

    # ------------------------------------------------------------ loads from other tiers

    def load_from(self, source: Tier, context_id: str, *, wait: bool = True) -> float:
        """Load a context held by `source` (cpu, disk or any tier) into this tier.

        Returns the seconds until the data is on the device (wait=True), or the seconds
        spent launching (wait=False; ``get`` waits for the rest). The measured transfer
        refines this tier's write_bps and the source's read_bps."""
        from evicctl.manager.tiers.disk import DiskTier

        self._settle(context_id)
        start = time.perf_counter()
        if isinstance(source, DiskTier):
            entry = source.held(context_id)  # (location, checksum) of the held file
            if wait:
                stored, nbytes = self._load_file(Path(entry.location), entry.checksum)
                seconds = time.perf_counter() - start
                self._hold(context_id, stored, None)
                self._observe_load(source, nbytes, seconds)
                return seconds
            self._staging()
            future = self._loader.submit(self._background_file, context_id, source, Path(entry.location), entry.checksum)
            self._hold_placeholder(context_id, entry.nbytes, _Pending(future=future))
            return time.perf_counter() - start
        stored, _ = source.get(context_id)
        on_device, done = self._copy_in(stored)
        if not wait:
            self._hold(context_id, on_device, _Pending(event=done))
            self._watch(done, start, self._host_bytes(stored), source)
            return time.perf_counter() - start
        done.synchronize()
        seconds = time.perf_counter() - start
        self._hold(context_id, on_device, None)
        self._observe_load(source, self._host_bytes(stored), seconds)
        return seconds

    def prefetch(self, context_id: str, source: Tier) -> None:
        """Start loading the next request's context in the background; ``get`` waits for it."""
        if self.contains(context_id) or not source.contains(context_id):
            return
        self.load_from(source, context_id, wait=False)

    def load_file(self, context_id: str, path: Path | str, checksum: str | None) -> float:
        """Read a safetensors file (as DiskTier writes) into this tier; returns seconds."""
        self._settle(context_id)
        start = time.perf_counter()
        stored, _ = self._load_file(Path(path), checksum)
        seconds = time.perf_counter() - start
        self._hold(context_id, stored, None)
        return seconds

    def _hold_placeholder(self, context_id: str, nbytes: int, pending: _Pending) -> None:
        # accounted at once (the memory is being taken); the tensors arrive with the future
        with self._lock:
            self._entries[context_id] = Entry(nbytes)
            self._pending[context_id] = pending

    def _background_file(self, context_id: str, source: Tier, path: Path, checksum: str | None) -> None:
        start = time.perf_counter()
        stored, nbytes = self._load_file(path, checksum)
        with self._lock:
            self._held[context_id] = stored
            self._entries[context_id] = Entry(stored.nbytes)
        self._observe_load(source, nbytes, time.perf_counter() - start)

    def _watch(self, done: torch.cuda.Event, start: float, nbytes: int, source: Tier) -> None:
        """Time an async copy to completion on the loader thread, for the bandwidth estimates."""
        self._staging()

        def finish() -> None:
            done.synchronize()
            self._observe_load(source, nbytes, time.perf_counter() - start)

        self._loader.submit(finish)

    def _observe_load(self, source: Tier, nbytes: int, seconds: float) -> None:
        self.observe("write", nbytes, seconds)
        source.observe("read", nbytes, seconds)

    # ------------------------------------------------------------ disk -> device

    def _load_file(self, path: Path, checksum: str | None) -> tuple[Stored, int]:
        """(Stored of views into one device buffer, file bytes); verifies the sha256."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError as exc:
            raise CorruptDataError(f"stored KV file {path} is missing") from exc
        try:
            size = os.fstat(fd).st_size
            head = os.pread(fd, st_format.HEADER_LEN_BYTES, 0)
            header_len = st_format.header_len(head, size)
            header_bytes = os.pread(fd, header_len, st_format.HEADER_LEN_BYTES)
            data_start = st_format.HEADER_LEN_BYTES + header_len
            payload = torch.empty(size - data_start, dtype=torch.uint8, device=self.device)  # [N]
            if checksum is not None and checksum.startswith(TREE_PREFIX):
                digest = self._stream_tree(fd, size, data_start, payload)
            else:
                hasher = hashlib.sha256()
                hasher.update(head)
                hasher.update(header_bytes)
                self._stream_into(fd, data_start, payload, hasher if checksum is not None else None)
                digest = hasher.hexdigest()
        finally:
            os.close(fd)
        if checksum is not None and digest != checksum:
            raise CorruptDataError(f"stored KV file {path} fails its checksum")
        return self._views(payload, header_bytes, path), size

    def _stream_into(self, fd: int, offset: int, payload: torch.Tensor, hasher) -> None:
        """File bytes [offset, offset + N) -> payload [N] on the device: read, hash and copy overlap."""
        ring = self._staging()
        stream = self._copy_stream()
        stream.wait_stream(torch.cuda.current_stream(self.device))  # payload was allocated there
        total = payload.numel()
        with ring.lock:
            pos = 0
            while pos < total:
                n = min(ring.chunk_bytes, total - pos)
                i, buf = ring.take()
                view = memoryview(buf.numpy())[:n]
                got = 0
                while got < n:
                    r = os.preadv(fd, [view[got:]], offset + pos + got)
                    if r <= 0:
                        raise CorruptDataError("stored KV file changed size while being read")
                    got += r
                if hasher is not None:  # one hasher thread: updates stay in file order
                    ring.hashed[i] = self._hasher.submit(hasher.update, view)
                with torch.cuda.stream(stream):
                    payload[pos : pos + n].copy_(buf[:n], non_blocking=True)
                ring.events[i] = torch.cuda.Event()
                ring.events[i].record(stream)
                pos += n
            for i in range(len(ring.buffers)):  # every hash and copy of this load done
                if ring.hashed[i] is not None:
                    ring.hashed[i].result()
                    ring.hashed[i] = None
                if ring.events[i] is not None:
                    ring.events[i].synchronize()
                    ring.events[i] = None

    def _stream_tree(self, fd: int, size: int, data_start: int, payload: torch.Tensor) -> str:
        """The whole file through TREE_CHUNK_BYTES pinned buffers: chunk i is hashed on a worker
        thread while chunk i+1 is read and its payload part copied to the device; returns the
        TREE_PREFIX checksum."""
        if self._tree_ring is None:
            self._tree_ring = _StagingRing(TREE_CHUNK_BYTES, HASH_WORKERS + 2)
            self._tree_pool = ThreadPoolExecutor(HASH_WORKERS, thread_name_prefix="evicctl-gpu-tree")
        ring, stream = self._tree_ring, self._copy_stream()
        stream.wait_stream(torch.cuda.current_stream(self.device))  # payload was allocated there
        digests: list[Future] = []
        with ring.lock:
            for start in range(0, size, TREE_CHUNK_BYTES):
                n = min(TREE_CHUNK_BYTES, size - start)
                i, buf = ring.take()
                view = memoryview(buf.numpy())[:n]
                got = 0
                while got < n:
                    r = os.preadv(fd, [view[got:]], start + got)
                    if r <= 0:
                        raise CorruptDataError("stored KV file changed size while being read")
                    got += r
                ring.hashed[i] = self._tree_pool.submit(chunk_digest, view)
                digests.append(ring.hashed[i])
                lo = max(start, data_start)  # the part of this chunk past the header
                if lo < start + n:
                    with torch.cuda.stream(stream):
                        payload[lo - data_start : start + n - data_start].copy_(buf[lo - start : n], non_blocking=True)
                    ring.events[i] = torch.cuda.Event()
                    ring.events[i].record(stream)
            for i in range(len(ring.buffers)):
                if ring.events[i] is not None:
                    ring.events[i].synchronize()
                    ring.events[i] = None
                ring.hashed[i] = None
        return tree_from_digests(d.result() for d in digests)

    def _views(self, payload: torch.Tensor, header_bytes: bytes, path: Path) -> Stored:
        specs, meta = st_format.parse_header(header_bytes)
        tensors = st_format.tensor_views(payload, specs)
        meta.pop("context_id", None)
        return from_safetensors_dict(tensors, meta)

    # ------------------------------------------------------------ bandwidth

    def probe(self) -> None:
        """write_bps: pinned host -> device copy; read_bps: device -> device copy (< 1 s)."""
        stream = self._copy_stream()
        host = torch.empty(PROBE_H2D_BYTES, dtype=torch.uint8, pin_memory=True)
        dev = torch.empty(PROBE_D2D_BYTES, dtype=torch.uint8, device=self.device)
        dev2 = torch.empty_like(dev)
        stream.wait_stream(torch.cuda.current_stream(self.device))

        def timed(fn: Callable[[], None]) -> float:
            with torch.cuda.stream(stream):
                fn()  # warm-up
                begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                begin.record(stream)
                fn()
                end.record(stream)
            end.synchronize()
            return begin.elapsed_time(end) / 1e3

        h2d_s = timed(lambda: dev[:PROBE_H2D_BYTES].copy_(host, non_blocking=True))
        d2d_s = timed(lambda: dev2.copy_(dev))
        self.write_bps = PROBE_H2D_BYTES / max(h2d_s, 1e-9)
        self.read_bps = 2 * PROBE_D2D_BYTES / max(d2d_s, 1e-9)  # bytes read + written
        torch.cuda.current_stream(self.device).wait_stream(stream)  # dev/dev2 freed on it next


__all__ = ["GpuTier", "TREE_PREFIX", "tree_checksum"]
