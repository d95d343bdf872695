"""Storage tiers: one small interface (put, get, delete, contains, capacity, bandwidth).

- CpuTier: the stored tensors in host memory (pinned when CUDA is present, so that a load to
  the GPU is one fast async copy). ``put`` copies; ``get`` hands out the tier's own tensors
  (read-only by convention: nothing in evicctl writes into a stored tensor).
- DiskTier: one safetensors file per context in a directory, written to a temp name in the
  same directory, fsynced, renamed over the final name, directory fsynced. The sha256 of the
  file is returned by ``put``, kept by the caller (the store's placements.checksum) and
  verified on every ``get``: a file that fails it raises CorruptDataError, never a KV.
- RedisTier: the same serialized bytes and sha256 in a Redis hash per context (a remote tier
  that engines on several hosts share).

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
import json
import os
import re
import secrets
import shutil
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from evicctl.config import TierConfig, default_cache_dir
from evicctl.errors import CorruptDataError, UnknownNameError, UsageError
from evicctl.manager.codecs import Stored, from_safetensors_dict, to_safetensors_dict

EWMA_WEIGHT = 0.2  # weight of a new observation in the bandwidth average
MIN_OBSERVED_BYTES = 256 << 10  # smaller transfers are dominated by fixed costs
PROBE_BYTES = 4 << 20
READ_CHUNK_BYTES = 8 << 20  # disk reads are hashed chunk by chunk, overlapping the next read
TIER_BACKENDS = ("gpu", "cpu", "disk", "redis")
# before any measurement (replaced by probe()): order-of-magnitude values for this kind of machine
DEFAULT_BPS = {"cpu": (8e9, 4e9), "disk": (1e9, 3e8), "redis": (5e8, 3e8)}  # (read, write)
_SAFE_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,99}$")
_PROBE_ID = "__probe__"


@dataclass(frozen=True)
class PutResult:
    location: str | None  # where the copy lives (a file path, a redis key); None in memory
    checksum: str | None  # sha256 hex of the serialized bytes; None in memory
    seconds: float


@dataclass(frozen=True)
class _Entry:
    nbytes: int  # Stored.nbytes
    location: str | None = None
    checksum: str | None = None


class Tier:
    """Base: the index of held contexts, capacity accounting and bandwidth estimates."""

    backend = "none"

    def __init__(self, *, name: str, rank: int, capacity_bytes: int) -> None:
        if capacity_bytes < 0:
            raise UsageError(f"tier {name}: capacity_bytes must be >= 0; got {capacity_bytes}")
        self.name, self.rank, self.capacity_bytes = name, rank, int(capacity_bytes)
        self.read_bps, self.write_bps = DEFAULT_BPS.get(self.backend, (1e9, 1e9))
        self._entries: dict[str, _Entry] = {}
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

    def _entry(self, context_id: str) -> _Entry:
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
            put = self.put(_PROBE_ID, stored)
            self._before_probe_read()
            _, read_s = self.get(_PROBE_ID)
        finally:
            self.delete(_PROBE_ID)
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
            self._entries[context_id] = _Entry(copy.nbytes)
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

    try:
        (header_len,) = struct.unpack_from("<Q", data, 0)
        header = json.loads(bytes(data[8 : 8 + header_len]))
        meta = header.get("__metadata__") or {}
        tensors = load(bytes(data) if not isinstance(data, bytes) else data)
    except Exception as exc:  # the safetensors parser raises its own error types
        raise CorruptDataError(f"stored KV is not a readable safetensors blob: {exc}") from exc
    meta.pop("context_id", None)
    return from_safetensors_dict(tensors, meta)


_ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}  # fmt: skip


def stored_from_buffer(buf: torch.Tensor) -> Stored:
    """A Stored whose tensors are views of `buf` (uint8 [N], a whole safetensors file).

    Saves the copy safetensors' own loader makes (a 46 MB context: ~30 ms here); a tensor
    whose offset is not aligned to its element size (safetensors aligns them) is copied."""
    try:
        (header_len,) = struct.unpack("<Q", buf[:8].numpy().tobytes())
        header = json.loads(buf[8 : 8 + header_len].numpy().tobytes())
        meta = header.pop("__metadata__", None) or {}
        base = 8 + header_len
        tensors = {}
        for name, spec in header.items():
            dtype = _ST_DTYPES[spec["dtype"]]
            start, end = (base + o for o in spec["data_offsets"])
            raw = buf[start:end]
            if start % dtype.itemsize:
                raw = raw.clone()
            tensors[name] = raw.view(dtype).view(spec["shape"])
    except (ValueError, KeyError, TypeError, RuntimeError, struct.error) as exc:
        raise CorruptDataError(f"stored KV is not a readable safetensors file: {exc}") from exc
    meta.pop("context_id", None)
    return from_safetensors_dict(tensors, meta)


def _payload_nbytes(header_bytes: bytes) -> int:
    """Sum of tensor bytes from a safetensors header (the data section's length)."""
    header = json.loads(header_bytes)
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    return max(ends, default=0)


def sha256_hex(data: bytes | bytearray | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------- disk


class DiskTier(Tier):
    backend = "disk"

    def __init__(self, path: Path | str, *, capacity_bytes: int, name: str = "disk", rank: int = 0) -> None:
        super().__init__(name=name, rank=rank, capacity_bytes=capacity_bytes)
        self.path = Path(path).expanduser().resolve()
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._hash_pool = None  # one helper thread, started on the first get
        self._remove_stale_temps()

    # ------------------------------------------------------------ files

    def file_for(self, context_id: str) -> Path:
        """The file a context lives in: its id when that is a safe file name, else a hash."""
        if _SAFE_ID.match(context_id) and not context_id.startswith("h-"):  # "h-": hashed names
            stem = context_id
        else:
            stem = "h-" + hashlib.sha256(context_id.encode()).hexdigest()[:40]
        return self.path / f"{stem}.safetensors"

    def files(self) -> list[Path]:
        """Every context file in the directory, held or not (orphans are those not adopted)."""
        return sorted(p for p in self.path.glob("*.safetensors") if p.is_file())

    def _remove_stale_temps(self) -> None:
        """Temp files of a writer that died mid-put (their pid is gone) are garbage."""
        import psutil

        for tmp in self.path.glob(".*.tmp"):
            parts = tmp.name.split(".")
            pid = int(parts[-3]) if len(parts) >= 4 and parts[-3].isdigit() else None
            if pid is None or not psutil.pid_exists(pid):
                tmp.unlink(missing_ok=True)

    def _fsync_dir(self) -> None:
        fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _write_temp(self, final: Path, data: bytes) -> Path:
        """`data` in a durable temp file beside `final` (removed again if anything fails)."""
        tmp = self.path / f".{final.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb", closefd=True) as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp

    # ------------------------------------------------------------ interface

    def put(self, context_id: str, stored: Stored) -> PutResult:
        start = time.perf_counter()
        data = serialize(context_id, stored)
        checksum = sha256_hex(data)
        final = self.file_for(context_id)
        tmp = self._write_temp(final, data)
        # rename and index switch together, so a concurrent get opens the file that
        # matches the checksum it reads (old or new, never a mix)
        with self._lock:
            try:
                os.replace(tmp, final)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            self._entries[context_id] = _Entry(stored.nbytes, str(final), checksum)
        self._fsync_dir()  # the rename itself is durable before put returns
        seconds = time.perf_counter() - start
        self.observe("write", stored.nbytes, seconds)
        return PutResult(str(final), checksum, seconds)

    @staticmethod
    def _open(path: Path):
        try:
            return path.open("rb", buffering=0)
        except FileNotFoundError as exc:
            raise CorruptDataError(f"stored KV file {path} is missing") from exc

    def _read_verified(self, f, path: Path, checksum: str | None) -> torch.Tensor:
        """The whole open file as uint8 [N], checksum verified.

        Read in chunks while a helper thread hashes the previous chunk (both release the
        GIL), so a get costs about max(read, sha256) rather than their sum."""
        digest = hashlib.sha256()
        pending = None
        with f:
            size = os.fstat(f.fileno()).st_size
            buf = torch.empty(size, dtype=torch.uint8)
            view = memoryview(buf.numpy())
            got = 0
            while got < size:
                n = f.readinto(view[got : got + READ_CHUNK_BYTES])
                if not n:
                    break
                if pending is not None:
                    pending.result()
                pending = self._hasher().submit(digest.update, view[got : got + n])
                got += n
            if pending is not None:
                pending.result()
        if got != size:
            raise CorruptDataError(f"stored KV file {path} changed size while being read")
        if checksum is not None and digest.hexdigest() != checksum:
            raise CorruptDataError(f"stored KV file {path} fails its sha256 checksum")
        return buf

    def close(self) -> None:
        with self._lock:
            pool, self._hash_pool = self._hash_pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    def _hasher(self):
        with self._lock:
            if self._hash_pool is None:
                from concurrent.futures import ThreadPoolExecutor

                self._hash_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="evicctl-sha256")
            return self._hash_pool

    def get(self, context_id: str) -> tuple[Stored, float]:
        start = time.perf_counter()
        with self._lock:  # entry and open file belong together (see put)
            entry = self._entry(context_id)
            path = Path(entry.location)
            f = self._open(path)
        stored = stored_from_buffer(self._read_verified(f, path, entry.checksum))
        seconds = time.perf_counter() - start
        self.observe("read", stored.nbytes, seconds)
        return stored, seconds

    def delete(self, context_id: str) -> None:
        with self._lock:
            entry = self._entries.pop(context_id, None)
            if entry is not None:
                Path(entry.location).unlink(missing_ok=True)

    def adopt(self, context_id: str, location: str, checksum: str | None, *, verify: bool = True) -> int:
        """Re-attach a file written before a restart; returns its Stored.nbytes.

        Raises CorruptDataError if the file is missing, outside this tier's directory, or
        (verify=True) fails its checksum; the context is then not held."""
        path = Path(location).expanduser().resolve()
        if path.parent != self.path:
            raise CorruptDataError(f"{location} is not in the disk tier's directory {self.path}")
        f = self._open(path)
        try:
            if verify:
                data = memoryview(self._read_verified(f, path, checksum).numpy())
                (header_len,) = struct.unpack_from("<Q", data, 0)
                header = bytes(data[8 : 8 + header_len])
            else:
                with f:
                    (header_len,) = struct.unpack("<Q", f.read(8))
                    header = f.read(header_len)
            nbytes = _payload_nbytes(header)
        except (struct.error, ValueError, KeyError, TypeError) as exc:
            raise CorruptDataError(f"stored KV file {path} is truncated or has an unreadable header") from exc
        with self._lock:
            self._entries[context_id] = _Entry(nbytes, str(path), checksum)
        return nbytes

    def _before_probe_read(self) -> None:
        entry = self._entry(_PROBE_ID)
        fd = os.open(entry.location, os.O_RDONLY)
        try:  # drop the just-written file from the page cache, so the probe reads the device
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


# ---------------------------------------------------------------- redis


class RedisTier(Tier):
    """A Redis hash per context: {data: safetensors bytes, sha256: hex}."""

    backend = "redis"

    def __init__(
        self,
        url: str,
        *,
        capacity_bytes: int,
        name: str = "redis",
        rank: int = 0,
        prefix: str = "evicctl:kv:",
        client=None,
    ) -> None:
        super().__init__(name=name, rank=rank, capacity_bytes=capacity_bytes)
        if client is None:
            import redis

            client = redis.Redis.from_url(url)
        self.url, self.prefix, self.client = url, prefix, client

    def close(self) -> None:
        self.client.close()

    def key_for(self, context_id: str) -> str:
        return self.prefix + context_id

    def put(self, context_id: str, stored: Stored) -> PutResult:
        start = time.perf_counter()
        data = serialize(context_id, stored)
        checksum = sha256_hex(data)
        key = self.key_for(context_id)
        with self._lock:  # the write and the index switch together (see get)
            self.client.hset(key, mapping={"data": data, "sha256": checksum})
            self._entries[context_id] = _Entry(stored.nbytes, key, checksum)
        seconds = time.perf_counter() - start
        self.observe("write", stored.nbytes, seconds)
        return PutResult(key, checksum, seconds)

    def get(self, context_id: str) -> tuple[Stored, float]:
        with self._lock:
            entry = self._entries.get(context_id)
        key = entry.location if entry else self.key_for(context_id)
        start = time.perf_counter()
        data, remote_sum = self.client.hmget(key, ["data", "sha256"])
        if data is None:
            if entry is None:
                raise KeyError(context_id)
            raise CorruptDataError(f"stored KV {key} is gone from {self.url}")
        with self._lock:
            after = self._entries.get(context_id)
        # our own checksum when we wrote (or adopted) it, before or after the fetch (a put of
        # ours may have replaced it meanwhile); else the writer's, from the hash
        expected = {e.checksum for e in (entry, after) if e is not None and e.checksum}
        if sha256_hex(data) not in (expected or {(remote_sum or b"").decode()}):
            raise CorruptDataError(f"stored KV {key} fails its sha256 checksum")
        stored = deserialize(data)
        seconds = time.perf_counter() - start
        self.observe("read", stored.nbytes, seconds)
        return stored, seconds

    def contains(self, context_id: str) -> bool:
        """Held by this tier, or put there by another engine sharing the server."""
        return super().contains(context_id) or bool(self.client.exists(self.key_for(context_id)))

    def delete(self, context_id: str) -> None:
        with self._lock:
            entry = self._entries.pop(context_id, None)
        self.client.delete(entry.location if entry else self.key_for(context_id))

    def adopt(self, context_id: str, location: str, checksum: str | None, *, verify: bool = True) -> int:
        """Re-attach a key written before a restart; returns its Stored.nbytes."""
        data = self.client.hget(location, "data")
        if data is None:
            raise CorruptDataError(f"stored KV {location} is gone from {self.url}")
        if verify and checksum is not None and sha256_hex(data) != checksum:
            raise CorruptDataError(f"stored KV {location} fails its sha256 checksum")
        (header_len,) = struct.unpack_from("<Q", data, 0)
        nbytes = _payload_nbytes(data[8 : 8 + header_len])
        with self._lock:
            self._entries[context_id] = _Entry(nbytes, location, checksum)
        return nbytes


# ---------------------------------------------------------------- construction


def _capacity(cfg: TierConfig, available_bytes) -> int:
    if cfg.capacity_bytes is not None:
        return int(cfg.capacity_bytes)
    fraction = float(cfg.capacity_fraction)
    if not 0.0 < fraction <= 1.0:
        raise UsageError(f"tier {cfg.name}: capacity_fraction must be in (0, 1]; got {fraction}")
    return int(fraction * available_bytes())


def _host_available() -> int:
    import psutil

    return psutil.virtual_memory().available


def make_tier(cfg: TierConfig, rank: int, *, cache_dir: Path | None = None) -> Tier:
    """Build the tier a TierConfig describes. Capacity fractions are of available host memory
    (cpu), free space under the directory (disk), free device memory (gpu), and of the
    server's maxmemory, or available host memory when it has none (redis)."""
    if cfg.name == "cpu":
        return CpuTier(capacity_bytes=_capacity(cfg, _host_available), name=cfg.name, rank=rank)
    if cfg.name == "disk":
        path = Path(cfg.path) if cfg.path else Path(cache_dir or default_cache_dir()) / "disk"
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        capacity = _capacity(cfg, lambda: shutil.disk_usage(path).free)
        return DiskTier(path, capacity_bytes=capacity, name=cfg.name, rank=rank)
    if cfg.name == "redis":
        import redis

        url = cfg.url or "redis://127.0.0.1:6379/0"
        client = redis.Redis.from_url(url)

        def redis_available() -> int:
            maxmemory = int(client.config_get("maxmemory").get("maxmemory", 0))
            return maxmemory or _host_available()

        capacity = _capacity(cfg, redis_available)
        return RedisTier(url, capacity_bytes=capacity, name=cfg.name, rank=rank, client=client)
    if cfg.name == "gpu":
        from evicctl.manager.gpu_tier import GpuTier

        capacity = _capacity(cfg, lambda: torch.cuda.mem_get_info()[0])
        return GpuTier(capacity_bytes=capacity, name=cfg.name, rank=rank)
    raise UnknownNameError("tier", cfg.name, TIER_BACKENDS)


__all__ = [
    "CpuTier",
    "DiskTier",
    "PutResult",
    "RedisTier",
    "TIER_BACKENDS",
    "Tier",
    "deserialize",
    "make_tier",
    "serialize",
    "sha256_hex",
]
