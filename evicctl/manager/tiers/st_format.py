"""The safetensors file layout, read the one way every tier reads it.

A file is an 8-byte little-endian header length, a JSON header (each tensor's dtype, shape
and [start, end) offsets into the data section, plus `__metadata__`), then the data. The
`safetensors` library loads whole files; the tiers also need the header alone (a restart
adopting files without reading them) and zero-copy views into a buffer they already hold
(pinned host or device memory), so those two steps live here, once.
"""

from __future__ import annotations

import json
import struct

import torch

from evicctl.errors import CorruptDataError

HEADER_LEN_BYTES = 8
DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}  # fmt: skip


def header_len(prefix: bytes | bytearray | memoryview, total_bytes: int | None = None) -> int:
    """The JSON header's length from a file's first 8 bytes; CorruptDataError when those are
    missing or point past the end (`total_bytes`, the file's size, where known)."""
    if len(prefix) < HEADER_LEN_BYTES:
        raise CorruptDataError("stored KV is truncated (no safetensors header length)")
    (n,) = struct.unpack_from("<Q", prefix, 0)
    if total_bytes is not None and n > total_bytes - HEADER_LEN_BYTES:
        raise CorruptDataError("stored KV has a safetensors header length past its end")
    return n


def split(data: bytes | bytearray | memoryview) -> tuple[bytes, int]:
    """(header bytes, offset of the data section) of a whole file held in memory."""
    n = header_len(data, len(data))
    return bytes(data[HEADER_LEN_BYTES : HEADER_LEN_BYTES + n]), HEADER_LEN_BYTES + n


def parse_header(header_bytes: bytes) -> tuple[dict[str, dict], dict[str, str]]:
    """(tensor specs by name, metadata); CorruptDataError if it is not a safetensors header."""
    try:
        header = json.loads(header_bytes)
        meta = header.pop("__metadata__", None) or {}
        if not isinstance(header, dict) or not all(isinstance(v, dict) for v in header.values()):
            raise ValueError("tensor entries are not objects")
    except (ValueError, AttributeError) as exc:
        raise CorruptDataError(f"stored KV has an unreadable safetensors header: {exc}") from exc
    return header, meta


def payload_nbytes(header_bytes: bytes) -> int:
    """Sum of tensor bytes from a safetensors header (the data section's length)."""
    specs, _meta = parse_header(header_bytes)
    try:
        return max((int(v["data_offsets"][1]) for v in specs.values()), default=0)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise CorruptDataError(f"stored KV has an unreadable safetensors header: {exc}") from exc


def tensor_views(buf: torch.Tensor, specs: dict[str, dict], base: int = 0) -> dict[str, torch.Tensor]:
    """Each tensor as a view of `buf` (uint8 [N], on any device) whose data section starts at
    `base`; a tensor not aligned to its element size (safetensors aligns them) is copied."""
    tensors = {}
    try:
        for name, spec in specs.items():
            dtype = DTYPES[spec["dtype"]]
            start, end = (base + int(o) for o in spec["data_offsets"])
            if not 0 <= start <= end <= buf.numel():
                raise ValueError(f"{name}: offsets past the data")
            raw = buf[start:end]
            if start % dtype.itemsize:
                raw = raw.clone()
            tensors[name] = raw.view(dtype).view(spec["shape"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CorruptDataError(f"stored KV is not a readable safetensors file: {exc}") from exc
    return tensors
