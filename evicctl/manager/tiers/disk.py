"""The disk tier: one safetensors file per context in a directory.

A put writes a temp file beside the final name (pid and a random tag in its name), fsyncs
it, renames it over the final name and fsyncs the directory, so a crash leaves the old
copy or the new one, never a mix; temp files of writers that died are removed at start.
The file's ``sha256-tree:`` checksum (checksum.py) is returned by ``put``, kept by the
caller (the store's placements.checksum) and verified on every ``get``: a file that fails
it raises CorruptDataError, never a KV. Files written with a plain sha256 checksum (older
versions) still verify on ``get`` and ``adopt``. ``adopt`` re-attaches a file after a
restart; ``files`` lists every context file, for orphan cleanup.

Hashing runs on HASH_WORKERS lanes beside the file I/O: a put hashes while it writes, a
get hashes each piece as soon as it is read, the tree checksum's chunks on several
threads at once (one sha256 stream is slower than a fast disk).

Files are not entropy-coded (nor are the redis tier's values): on the packaged model's real
KV, zstd saves 5-8% of int8/int4/int3 files and 12-17% of int2 ones, and decompresses at
about the speed this tier reads, so a get would get slower for that (BENCHMARKS.md,
"Entropy coding of stored KV"; benchmarks/entropy_bench.py).
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import struct
import time
from pathlib import Path

import torch

from evicctl.errors import CorruptDataError
from evicctl.manager.codecs.codec import Stored, from_safetensors_dict
from evicctl.manager.tiers import st_format
from evicctl.manager.tiers.checksum import HASH_WORKERS, HashLanes, TreeHasher, hasher_for, is_tree
from evicctl.manager.tiers.tier import (
    PROBE_ID,
    Entry,
    PutResult,
    Tier,
    serialize,
)

READ_CHUNK_BYTES = 8 << 20  # reads are hashed piece by piece, overlapping the next read
_SAFE_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,99}$")



def _header_len(buf: torch.Tensor) -> int:
    return st_format.header_len(buf[: st_format.HEADER_LEN_BYTES].numpy().tobytes(), buf.numel())


def stored_from_buffer(buf: torch.Tensor) -> Stored:
    """A Stored whose tensors are views of `buf` (uint8 [N], a whole safetensors file).

    Saves the copy safetensors' own loader makes (a 46 MB context: ~30 ms here); a tensor
    whose offset is not aligned to its element size (safetensors aligns them) is copied."""
    header, base = st_format.split(memoryview(buf[: st_format.HEADER_LEN_BYTES + _header_len(buf)].numpy()))
    specs, meta = st_format.parse_header(header)
    tensors = st_format.tensor_views(buf, specs, base)
    meta.pop("context_id", None)
    return from_safetensors_dict(tensors, meta)


class DiskTier(Tier):
    backend = "disk"

    def __init__(self, path: Path | str, *, capacity_bytes: int, name: str = "disk", rank: int = 0) -> None:
        super().__init__(name=name, rank=rank, capacity_bytes=capacity_bytes)
        self.path = Path(path).expanduser().resolve()
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._lanes = HashLanes(HASH_WORKERS, name="evicctl-disk-hash")  # threads start on first use
        self._remove_stale_temps()

    # ------------------------------------------------------------ files

    def file_for(self, context_id: str) -> Path:
        """The file a context lives in: its id when that is a safe file name, else a hash."""
        # fullmatch: `$` alone would let a trailing newline into the file name
        if _SAFE_ID.fullmatch(context_id) and not context_id.startswith("h-"):  # "h-": hashed names
            stem = context_id
        else:
            # surrogatepass: any str names a file (a lone surrogate would fail plain encode())
            stem = "h-" + hashlib.sha256(context_id.encode("utf-8", "surrogatepass")).hexdigest()[:40]
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
        hasher = TreeHasher(self._lanes)
        hasher.update(data)  # hashed on the lanes while the file is written
        final = self.file_for(context_id)
        try:
            tmp = self._write_temp(final, data)
        finally:
            checksum = hasher.hexdigest()  # (no hash left running over `data` either way)
        # rename and index switch together, so a concurrent get opens the file that
        # matches the checksum it reads (old or new, never a mix)
        with self._lock:
            try:
                os.replace(tmp, final)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            self._entries[context_id] = Entry(stored.nbytes, str(final), checksum)
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
        """The whole open file as uint8 [N], checksum verified (tree or plain sha256; none
        when `checksum` is None).

        Read in pieces while the lanes hash the pieces already read (both release the GIL),
        so a get costs about max(read, hash) rather than their sum, and with a tree checksum
        the hash itself runs on several threads."""
        hasher = hasher_for(checksum, self._lanes) if checksum is not None else None
        with f:
            size = os.fstat(f.fileno()).st_size
            buf = torch.empty(size, dtype=torch.uint8)
            view = memoryview(buf.numpy())
            got = 0
            try:
                while got < size:
                    n = f.readinto(view[got : got + READ_CHUNK_BYTES])
                    if not n:
                        break
                    if hasher is not None:
                        hasher.update(view[got : got + n])
                    got += n
            finally:
                digest = hasher.hexdigest() if hasher is not None else None  # no hash left running
        if got != size:
            raise CorruptDataError(f"stored KV file {path} changed size while being read")
        if checksum is not None and digest != checksum:
            kind = "sha256-tree" if is_tree(checksum) else "sha256"
            raise CorruptDataError(f"stored KV file {path} fails its {kind} checksum")
        return buf

    def close(self) -> None:
        self._lanes.close()

    def get(self, context_id: str) -> tuple[Stored, float]:
        start = time.perf_counter()
        with self._lock:  # entry and open file belong together (see put)
            entry = self.held(context_id)
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

        `checksum`: what put returned (``sha256-tree:...``, or the plain sha256 hex of files
        written before the tree form). Raises CorruptDataError if the file is missing,
        outside this tier's directory, or (verify=True) fails its checksum; the context is
        then not held."""
        path = Path(location).expanduser().resolve()
        if path.parent != self.path:
            raise CorruptDataError(f"{location} is not in the disk tier's directory {self.path}")
        f = self._open(path)
        try:
            if verify:
                header, _base = st_format.split(memoryview(self._read_verified(f, path, checksum).numpy()))
            else:
                with f:
                    header = f.read(st_format.header_len(f.read(st_format.HEADER_LEN_BYTES), os.fstat(f.fileno()).st_size))
            nbytes = st_format.payload_nbytes(header)
        except (struct.error, ValueError, KeyError, TypeError) as exc:
            raise CorruptDataError(f"stored KV file {path} is truncated or has an unreadable header") from exc
        with self._lock:
            self._entries[context_id] = Entry(nbytes, str(path), checksum)
        return nbytes

    def _before_probe_read(self) -> None:
        entry = self.held(PROBE_ID)
        fd = os.open(entry.location, os.O_RDONLY)
        try:  # drop the just-written file from the page cache, so the probe reads the device
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
