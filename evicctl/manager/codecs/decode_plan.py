"""Decode plans: what a quantized decode needs from a stored form's tensors, built once per form.

A quantized decode hands the kernels 32 layers x (codes, scale, mn) x 2 sides; checking those
192 tensors' shapes, strides and addresses and stacking the residual rows costs ~0.5 ms of
host time, more than the GPU needs to dequantize an 8k-token Llama-8B context (~0.3 ms). A
stored form is immutable and a tier decodes the same one on every hit, so the checked layer
tables are kept with it (weakly: they go when the form goes) and a repeated decode only
launches the kernels.

Only forms whose tensors already sit on the decode's CUDA device get a plan; a decode that
first moves the tensors (host -> GPU) or runs the torch reference (CPU) builds the lists
each time, as before.
"""

from __future__ import annotations

import weakref

import torch

from evicctl.manager.codecs import quant

# owner (a Stored) -> {(side, device): (codes, scales, mns, residual)}
_PLANS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _lists(t: dict[str, torch.Tensor], side: str, layers: int) -> tuple[list, list, list]:
    return tuple([t[f"{side}.{i}.{part}"] for i in range(layers)] for part in ("codes", "scale", "mn"))


def _residual(t: dict[str, torch.Tensor], side: str, layers: int) -> list[torch.Tensor] | None:
    if f"{side}.0.res" not in t:
        return None
    return [t[f"{side}.{i}.res"] for i in range(layers)]


def quantized_parts(owner, t: dict[str, torch.Tensor], side: str, layers: int, target: torch.device):
    """(codes, scales, mns, residual) of one side ("k" | "v"): the per-layer parts for
    quant.dequantize_layers (checked layer tables when planned) and the residual rows, stacked
    [L, 1, H, R, D] when planned, else a list of L tensors, or None without a residual."""
    first = t[f"{side}.0.codes"]
    kernels = quant.kernels_for(first)
    if owner is None or kernels is None or first.device != target:
        return (*_lists(t, side, layers), _residual(t, side, layers))
    key = (side, target)
    plans = _PLANS.get(owner)
    if plans is None:
        plans = _PLANS.setdefault(owner, {})
    plan = plans.get(key)
    if plan is None:
        codes, scales, mns = _lists(t, side, layers)
        try:
            checked = tuple(kernels.as_layers(x, 4, "decode") for x in (codes, scales, mns))
        except ValueError:  # mixed layouts: the unplanned path decides (kernel or reference)
            return codes, scales, mns, _residual(t, side, layers)
        residual = _residual(t, side, layers)
        plan = plans[key] = (*checked, None if residual is None else torch.stack(residual))
    return plan
