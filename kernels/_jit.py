"""Triton helpers shared by the kernel modules (imports Triton: only kernel modules import this)."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def layer_offset(offs_ptr, layer, ALIGNED: tl.constexpr):
    """Element offset of one layer's tensor from the launch's base pointer.

    ALIGNED: every offset of the launch is a multiple of 16 elements (checked on the host),
    which lets the compiler keep 16-byte vector loads and stores; without the hint it must
    assume any alignment and moves one element per instruction.
    """
    off = tl.load(offs_ptr + layer)
    if ALIGNED:
        off = tl.multiple_of(off, 16)
    return off
