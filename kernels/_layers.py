"""Many same-shaped tensors (one per layer) seen by one kernel launch.

A launch per layer costs more host time than the kernel takes on a short context (8k tokens:
~6 us of memory traffic per layer), so the `*_layers` kernels take every layer at once. Each
layer's tensor is reached as ``base + offsets[layer]`` (int64 element offsets from the first
tensor's address), which works for separate allocations and for views of one stacked tensor.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch

_TABLES: OrderedDict[tuple, torch.Tensor] = OrderedDict()
_TABLES_MAX = 256


def layer_table(tensors: Sequence[torch.Tensor], device: torch.device) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """(base tensor, int64 [L] element offsets on `device`, aligned) for tensors of one dtype.

    aligned: the base is 16-byte aligned and every offset is a multiple of 16 elements, so a
    kernel may promise the compiler aligned rows (16-byte vector accesses). The offsets table
    is cached by value, so a steady state with the same allocations makes no host-to-device
    copy.
    """
    base = tensors[0]
    size = base.element_size()
    base_ptr = base.data_ptr()
    deltas = [t.data_ptr() - base_ptr for t in tensors]
    if any(d % size for d in deltas) or any(t.dtype != base.dtype for t in tensors):
        raise ValueError("layer tensors must share a dtype and element alignment")
    offsets = tuple(d // size for d in deltas)
    key = (device, offsets)
    table = _TABLES.get(key)
    if table is None:
        table = torch.tensor(offsets, dtype=torch.int64).to(device)
        _TABLES[key] = table
        if len(_TABLES) > _TABLES_MAX:
            _TABLES.popitem(last=False)
    aligned = base_ptr % 16 == 0 and all(o % 16 == 0 for o in offsets)
    return base, table, aligned


def as_layers(x: torch.Tensor | Sequence[torch.Tensor], rank: int, what: str) -> list[torch.Tensor]:
    """A stacked [L, *shape] tensor or a sequence of L tensors -> list of L tensors of `rank` dims."""
    layers = list(x.unbind(0)) if isinstance(x, torch.Tensor) else list(x)
    if not layers:
        raise ValueError(f"{what}: no layers")
    first = layers[0]
    for t in layers:
        if t.dim() != rank or t.shape != first.shape or t.dtype != first.dtype or t.device != first.device:
            raise ValueError(f"{what}: every layer must be a {rank}-d tensor of one shape, dtype and device")
        if t.stride() != first.stride():
            raise ValueError(f"{what}: every layer must have the same strides")
    return layers


def kernel_device(*tensors: torch.Tensor, device: torch.device | str | None = None) -> torch.device:
    """The device a launch runs on: CUDA (inputs may be pinned host memory), or CPU when interpreting."""
    from . import interpreting

    if device is not None:
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    else:
        cuda = [t.device for t in tensors if t.is_cuda]
        device = cuda[0] if cuda else tensors[0].device
    if device.type == "cuda":
        for t in tensors:
            if not t.is_cuda and not t.is_pinned():
                raise ValueError("kernel inputs must be CUDA tensors or pinned host tensors")
        return device
    if interpreting():
        return device
    raise ValueError(f"kernels run on CUDA; got tensors on {device}")


# Tests set this to fill every output a kernel allocates with NaN (floats) or 0xA5 (bytes)
# before the kernel runs, so an element the kernel fails to write shows up.
POISON_OUTPUTS = False


def new_output(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """torch.empty, or a poisoned tensor when POISON_OUTPUTS is set."""
    if not POISON_OUTPUTS:
        return torch.empty(shape, dtype=dtype, device=device)
    if dtype.is_floating_point:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.full(shape, 0xA5 if dtype == torch.uint8 else -1, dtype=dtype, device=device)
