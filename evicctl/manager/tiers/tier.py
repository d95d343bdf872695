"""Storage tiers: one small interface (put, get, delete, contains, capacity, bandwidth).

- CpuTier: the stored tensors in host memory (pinned when CUDA is present, so that a load to
  the GPU is one fast async copy). ``put`` copies; ``get`` hands out the tier's own tensors
  (read-only by convention: nothing in evicctl writes into a stored tensor).
- DiskTier (disk.py): one safetensors file per context in a directory, written to a
  temp name in the same directory, fsynced, renamed over the final name, directory fsynced.
  The file's checksum (``sha256-tree:``, checksum.py: verifiable on several threads) is
  returned by ``put``, kept by the caller (the store's placements.checksum) and verified
  on every ``get``: a file that fails it raises CorruptDataError, never a KV.
- RedisTier (remote.py): the same serialized bytes and sha256 in a Redis hash per
  context (a remote tier that engines on several hosts share).
- GpuTier (gpu.py): device memory.

This module keeps the base class, the host-memory tier and the safetensors serialization
the others share; build.py's ``make_tier`` builds any backend from its TierConfig, importing
each backend's module (and the redis client) only when it is configured.

Accounting: ``used_bytes`` is the sum of ``Stored.nbytes`` held (the bytes the placer plans
with; a safetensors file adds a header of ~100 bytes per tensor). ``put`` does not refuse
over capacity: keeping tiers under capacity is the placer's job, and a move holds both
copies briefly. A ``put`` of an id already present replaces it (atomically on disk), so a
same-tier recompress is a single put, not put + delete.

Bandwidths: ``probe()`` measures read/write bytes per second with a few MB through the
tier's own put/get path (including serialization and checksums), and every put/get the
tier performs refines them by an exponentially weighted moving average (``observe``).
Callers that time a transfer the tier cannot see (e.g. pinned host -> GPU in decode) may
call ``observe`` themselves.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass

import torch

from evicctl.config import TierConfig
from evicctl.errors import CorruptDataError, UsageError
from evicctl.manager.codecs.codec import Stored, from_safetensors_dict, to_safetensors_dict
from evicctl.manager.tiers import st_format

EWMA_WEIGHT = 0.2  # weight of a new observation in the bandwidth average
MIN_OBSERVED_BYTES = 256 << 10  # smaller transfers are dominated by fixed costs
PROBE_BYTES = 4 << 20
TIER_BACKENDS = ("gpu", "cpu", "disk", "redis")
# before any measurement (replaced by probe()): order-of-magnitude values for this kind of machine
DEFAULT_BPS = {"cpu": (8e9, 4e9), "disk": (1e9, 3e8), "redis": (5e8, 3e8)}  # (read, write)
PROBE_ID = "__probe__"  # the context id probe() puts and deletes


@dataclass(frozen=True)
class PutResult:
    location: str | None  # where the copy lives (a file path, a redis key); None in memory
    # of the serialized bytes: "sha256-tree:<hex>" (disk), sha256 hex (redis); None in memory
    checksum: str | None
    seconds: float


@dataclass(frozen=True)
class HeldEntry:
    """What a tier knows of a context it holds."""

    nbytes: int  # Stored.nbytes
    location: str | None = None  # file path or redis key; None in memory
    checksum: str | None = None  # as PutResult.checksum


Entry = HeldEntry  # the backends' short name


class Tier:
    """Base: the index of held contexts, capacity accounting and bandwidth estimates."""

    backend = "none"

    def __init__(self, *, name: str, rank: int, capacity_bytes: int) -> None:
        if capacity_bytes < 0:
            raise UsageError(f"tier {name}: capacity_bytes must be >= 0; got {capacity_bytes}")
        self.name, self.rank, self.capacity_bytes = name, rank, int(capacity_bytes)
        self.read_bps, self.write_bps = DEFAULT_BPS.get(self.backend, (1e9, 1e9))
        self._entries: dict[str, Entry] = {}
        self._lock = threading.RLock()

    # ------------------------------------------------------------ accounting

    @property
    def used_bytes(self) -> int:
        with self._lock:
            return sum(e.nbytes for e in self._entries.values())

    @property
    def free_bytes(self) -> int:
        return self.capacity_bytes - self.used_bytes

    def contains(self, context_id: str) -> bool:
        with self._lock:
            return context_id in self._entries

    def context_ids(self) -> list[str]:
        with self._lock:
            return list(self._entries)

    def stored_nbytes(self, context_id: str) -> int:
        """Stored.nbytes of a held context; KeyError if absent."""
        with self._lock:
            return self._entries[context_id].nbytes

    def held(self, context_id: str) -> HeldEntry:
        """Bytes, location and checksum of a held context (e.g. the file a GPU load reads
        straight from disk); KeyError if absent."""
        with self._lock:
            entry = self._entries.get(context_id)
        if entry is None:
            raise KeyError(context_id)
        return entry

    # ------------------------------------------------------------ bandwidth

    def observe(self, op: str, nbytes: int, seconds: float) -> None:
        """Fold one measured transfer ('read' or 'write') into the bandwidth average."""
        if op not in ("read", "write"):
            raise ValueError(f"op must be 'read' or 'write'; got {op!r}")
        if nbytes < MIN_OBSERVED_BYTES or seconds <= 0:
            return
        attr = f"{op}_bps"
        setattr(self, attr, (1 - EWMA_WEIGHT) * getattr(self, attr) + EWMA_WEIGHT * nbytes / seconds)

    def probe(self) -> None:
        """Measure read/write bandwidth through put/get of PROBE_BYTES (well under a second)."""
        stored = Stored("none", {"probe": torch.randint(0, 255, (PROBE_BYTES,), dtype=torch.uint8)}, {})
        try:
            put = self.put(PROBE_ID, stored)
            self._before_probe_read()
            _, read_s = self.get(PROBE_ID)
        finally:
            self.delete(PROBE_ID)
        self.write_bps = PROBE_BYTES / max(put.seconds, 1e-9)
        self.read_bps = PROBE_BYTES / max(read_s, 1e-9)

    def _before_probe_read(self) -> None:
        """Hook: make the probe's read honest (the disk tier drops the file from the page cache)."""

    # ------------------------------------------------------------ the interface

    def put(self, context_id: str, stored: Stored) -> PutResult:
        raise NotImplementedError

    def get(self, context_id: str) -> tuple[Stored, float]:
        """(stored, seconds); KeyError if absent, CorruptDataError if it fails its checksum."""
        raise NotImplementedError

    def delete(self, context_id: str) -> None:
        """Remove a context; no-op if absent."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what the tier holds open (threads, connections); its data stays."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.used_bytes}/{self.capacity_bytes} B>"


# ---------------------------------------------------------------- host memory


def _cuda_present() -> bool:
    return torch.cuda.is_available()  # does not create a CUDA context


class CpuTier(Tier):
    backend = "cpu"

    def __init__(self, *, capacity_bytes: int, name: str = "cpu", rank: int = 0, pin: bool | None = None) -> None:
        super().__init__(name=name, rank=rank, capacity_bytes=capacity_bytes)
        self.pin = _cuda_present() if pin is None else pin
        self._held: dict[str, Stored] = {}

    def _copy(self, t: torch.Tensor) -> torch.Tensor:
        out = torch.empty(t.shape, dtype=t.dtype, pin_memory=self.pin)
        return out.copy_(t)

    def put(self, context_id: str, stored: Stored) -> PutResult:
        start = time.perf_counter()
        copy = Stored(stored.codec, {k: self._copy(t) for k, t in stored.tensors.items()}, dict(stored.meta))
        seconds = time.perf_counter() - start
        with self._lock:
            self._held[context_id] = copy
            self._entries[context_id] = Entry(copy.nbytes)
        self.observe("write", copy.nbytes, seconds)
        return PutResult(None, None, seconds)

    def get(self, context_id: str) -> tuple[Stored, float]:
        with self._lock:
            stored = self._held.get(context_id)
        if stored is None:
            raise KeyError(context_id)
        # no bytes move here; the cost of a CPU-held KV is its copy to the compute device,
        # which read_bps (probed as that copy) stands for
        return stored, 0.0

    def delete(self, context_id: str) -> None:
        with self._lock:
            self._held.pop(context_id, None)
            self._entries.pop(context_id, None)

    def probe(self) -> None:
        """read_bps: host -> compute device copy (pinned H2D with CUDA, else a memcpy);
        write_bps: a copy into this tier's memory."""
        src = torch.randint(0, 255, (PROBE_BYTES,), dtype=torch.uint8)
        start = time.perf_counter()
        held = self._copy(src)
        self.write_bps = PROBE_BYTES / max(time.perf_counter() - start, 1e-9)
        if self.pin:
            held.to("cuda", non_blocking=True)  # warm up the context and the copy engine
            torch.cuda.synchronize()
            start = time.perf_counter()
            held.to("cuda", non_blocking=True)
            torch.cuda.synchronize()
        else:
            start = time.perf_counter()
            held.clone()
        self.read_bps = PROBE_BYTES / max(time.perf_counter() - start, 1e-9)


# ---------------------------------------------------------------- serialization


def serialize(context_id: str, stored: Stored) -> bytes:
    """safetensors bytes of a stored KV (its meta + context_id as the header's metadata)."""
    from safetensors.torch import save

    tensors, meta = to_safetensors_dict(stored)
    return save(tensors, {**meta, "context_id": context_id})


def deserialize(data: bytes | bytearray | memoryview) -> Stored:
    """Inverse of serialize; raises CorruptDataError on anything unreadable."""
    from safetensors.torch import load

    _specs, meta = st_format.parse_header(st_format.split(data)[0])
    try:
        tensors = load(bytes(data) if not isinstance(data, bytes) else data)
    except Exception as exc:  # the safetensors parser raises its own error types
        raise CorruptDataError(f"stored KV is not a readable safetensors blob: {exc}") from exc
    meta.pop("context_id", None)
    return from_safetensors_dict(tensors, meta)


def sha256_hex(data: bytes | bytearray | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------- construction


def configured_capacity_bytes(cfg: TierConfig, available_bytes) -> int:
    """cfg.capacity_bytes, or cfg.capacity_fraction of `available_bytes()` (called only then)."""
    if cfg.capacity_bytes is not None:
        return int(cfg.capacity_bytes)
    fraction = float(cfg.capacity_fraction)
    if not 0.0 < fraction <= 1.0:
        raise UsageError(f"tier {cfg.name}: capacity_fraction must be in (0, 1]; got {fraction}")
    return int(fraction * available_bytes())


def host_available_bytes() -> int:
    import psutil

    return psutil.virtual_memory().available


__all__ = [
    "CpuTier",
    "HeldEntry",
    "PutResult",
    "TIER_BACKENDS",
    "Tier",
    "configured_capacity_bytes",
    "deserialize",
    "serialize",
    "sha256_hex",
]
