"""Many same-shaped tensors (one per layer) seen by one kernel launch.

A launch per layer costs more host time than the kernel takes on a short context (8k tokens:
~6 us of memory traffic per layer), so the `*_layers` kernels take every layer at once. Each
layer's tensor is reached as ``base + offsets[layer]`` (int64 element offsets from the first
tensor's address), which works for separate allocations and for views of one stacked tensor.

Ragged layers (PyramidKV keeps a different token count in every layer) differ in the token
dim (-2) and, with it, in the strides of the dims before it; a launch that takes them reads
each layer's token count and head stride from a second table (rows_table).
"""

from __future__ import annotations

from collections import OrderedDict

import torch

_TABLES: OrderedDict[tuple, torch.Tensor] = OrderedDict()
_TABLES_MAX = 256


class Layers:
    """L same-shaped tensors: a stacked [L, ...] tensor, or a list of separate ones.

    Indexing and len() work as on a list; the stacked form never builds the L views."""

    __slots__ = ("stacked", "items", "first", "count", "offsets", "rows", "head_strides")

    def __init__(
        self,
        stacked: torch.Tensor | None = None,
        items: list[torch.Tensor] | None = None,
        offsets: tuple[int, ...] | None = None,
        rows: tuple[int, ...] | None = None,
        head_strides: tuple[int, ...] | None = None,
    ) -> None:
        """offsets: the items' element offsets from the first, when the caller computed them
        while validating (as_layers), so layer_table need not read every address again.
        rows, head_strides: each item's size of dim -2 and stride of dim -3, for ragged items
        (as_layers(..., ragged=True)); None when every item has the first's shape and strides."""
        self.stacked, self.items, self.offsets = stacked, items, offsets
        self.rows, self.head_strides = rows, head_strides
        self.first = stacked[0] if stacked is not None else items[0]
        self.count = stacked.shape[0] if stacked is not None else len(items)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> torch.Tensor:
        if i == 0:
            return self.first
        return self.stacked[i] if self.stacked is not None else self.items[i]


def layer_table(layers, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """(base tensor, int64 [L] element offsets on `device`, aligned) for `layers` (a Layers,
    a stacked [L, ...] tensor or a list of tensors of one dtype).

    aligned: the base is 16-byte aligned and every offset is a multiple of 16 elements, so a
    kernel may promise the compiler aligned rows (16-byte vector accesses). The offsets table
    is cached by value, so a steady state with the same allocations makes no host-to-device
    copy.
    """
    if isinstance(layers, torch.Tensor):
        layers = Layers(stacked=layers)
    elif not isinstance(layers, Layers):
        layers = Layers(items=list(layers))
    base = layers.first
    base_ptr = base.data_ptr()
    if layers.stacked is not None:
        step = layers.stacked.stride(0)
        key = (device, "stacked", layers.count, step)
        offsets = None
    else:
        offsets = layers.offsets
        if offsets is None:
            size = base.element_size()
            deltas = [t.data_ptr() - base_ptr for t in layers.items]
            if any(d % size for d in deltas) or any(t.dtype != base.dtype for t in layers.items):
                raise ValueError("layer tensors must share a dtype and element alignment")
            offsets = tuple(d // size for d in deltas)
        key = (device, offsets)
    table = _TABLES.get(key)
    if table is None:
        if offsets is None:
            offsets = tuple(range(0, layers.count * step, step)) if step else (0,) * layers.count
        table = torch.tensor(offsets, dtype=torch.int64).to(device)
        _TABLES[key] = table
        if len(_TABLES) > _TABLES_MAX:
            _TABLES.popitem(last=False)
    if offsets is None:
        aligned = base_ptr % 16 == 0 and (layers.count == 1 or step % 16 == 0)
    else:
        aligned = base_ptr % 16 == 0 and all(o % 16 == 0 for o in offsets)
    return base, table, aligned


def as_layers(x, rank: int, what: str, *, ragged: bool = False) -> Layers:
    """A stacked [L, *shape] tensor, a sequence of L tensors of `rank` dims, or a Layers -> Layers.

    ragged: the tensors may differ in their size of dim -2 (tokens) and so in the strides of
    the dims before it (every other size, the last two strides, dtype and device shared); the
    result then records each one's rows and head stride (dim -3)."""
    if isinstance(x, Layers):
        return x
    if isinstance(x, torch.Tensor):
        if x.dim() != rank + 1 or x.shape[0] == 0:
            raise ValueError(f"{what}: expected a stacked [L, ...] tensor of {rank + 1} dims; got {tuple(x.shape)}")
        return Layers(stacked=x)
    items = list(x)
    if not items:
        raise ValueError(f"{what}: no layers")
    first = items[0]
    if first.dim() != rank:
        raise ValueError(f"{what}: every layer must be a {rank}-d tensor; got {tuple(first.shape)}")
    # One pass over the layers that also records their offsets for layer_table: this runs on
    # every decode, and a few attribute reads per layer x 32 layers x 6 tensors is most of a
    # short context's decode time on the host.
    shape, dtype, device, stride = first.shape, first.dtype, first.device, first.stride()
    size, base_ptr = first.element_size(), first.data_ptr()
    offsets = []
    for t in items:
        if t.shape != shape or t.stride() != stride or t.dtype != dtype or t.device != device:
            if ragged:  # (a second pass, only for layers that differ)
                return _ragged_layers(items, rank, what)
            raise ValueError(f"{what}: every layer must have one shape, dtype, device and strides")
        delta = t.data_ptr() - base_ptr
        if delta % size:
            raise ValueError("layer tensors must share a dtype and element alignment")
        offsets.append(delta // size)
    return Layers(items=items, offsets=tuple(offsets))


def _ragged_layers(items: list[torch.Tensor], rank: int, what: str) -> Layers:
    """as_layers of layers that may differ in their rows (dim -2) and the strides before it."""
    first = items[0]
    dtype, device, size, base_ptr = first.dtype, first.device, first.element_size(), first.data_ptr()
    outer, width, inner = tuple(first.shape[:-2]), first.shape[-1], first.stride()[-2:]
    offsets, rows, head_strides = [], [], []
    for t in items:
        shape, stride = t.shape, t.stride()
        if t.dtype != dtype or t.device != device:
            raise ValueError(f"{what}: every layer must have one dtype and device")
        if len(shape) != rank or tuple(shape[:-2]) != outer or shape[-1] != width or stride[-2:] != inner:
            raise ValueError(f"{what}: ragged layers may differ only in their rows (dim -2)")
        delta = t.data_ptr() - base_ptr
        if delta % size:
            raise ValueError("layer tensors must share a dtype and element alignment")
        offsets.append(delta // size)
        rows.append(shape[-2])
        head_strides.append(stride[-3] if rank > 2 else 0)
    return Layers(items=items, offsets=tuple(offsets), rows=tuple(rows), head_strides=tuple(head_strides))


def rows_of(layers: Layers) -> tuple[int, ...]:
    """Each layer's size of dim -2 (ragged or not)."""
    return layers.rows if layers.rows is not None else (layers.first.shape[-2],) * layers.count


def head_strides_of(layers: Layers) -> tuple[int, ...]:
    """Each layer's stride of dim -3 (ragged or not)."""
    if layers.head_strides is not None:
        return layers.head_strides
    return (layers.first.stride(-3),) * layers.count


def rows_table(rows: tuple[int, ...], head_strides: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """int64 [L, 2] on `device`: each layer's (rows, output head stride), for a ragged launch;
    cached by value like the offsets (a steady state makes no host-to-device copy)."""
    key = (device, "rows", rows, head_strides)
    table = _TABLES.get(key)
    if table is None:
        table = torch.tensor(list(zip(rows, head_strides, strict=True)), dtype=torch.int64).to(device)
        _TABLES[key] = table
        if len(_TABLES) > _TABLES_MAX:
            _TABLES.popitem(last=False)
    return table


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
