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

The layer-by-layer forms (layered.py) use the same plans: their layers may hold different
token counts (PyramidKV), which the kernels' checked tables record (``ragged``), and a ThinK
form's kept key channels are checked, and their column map for the key kernel built, once
(``cached``).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch

from evicctl.manager.codecs import quant

# owner (a Stored) -> {(what, device): plan}
_PLANS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _lists(t: dict[str, torch.Tensor], side: str, layers: int) -> tuple[list, list, list]:
    return tuple([t[f"{side}.{i}.{part}"] for i in range(layers)] for part in ("codes", "scale", "mn"))


def _residual(t: dict[str, torch.Tensor], side: str, layers: int) -> list[torch.Tensor] | None:
    if f"{side}.0.res" not in t:
        return None
    return [t[f"{side}.{i}.res"] for i in range(layers)]


def _stacked(residual: list[torch.Tensor] | None) -> torch.Tensor | list[torch.Tensor] | None:
    """The residual rows stacked [L, 1, H, R, D] where every layer has the same count, else the list."""
    if residual is None or any(r.shape != residual[0].shape for r in residual):
        return residual
    return torch.stack(residual)


def _plans(owner) -> dict:
    plans = _PLANS.get(owner)
    if plans is None:
        plans = _PLANS.setdefault(owner, {})
    return plans


def quantized_parts(
    owner, t: dict[str, torch.Tensor], side: str, layers: int, target: torch.device, *, ragged: bool = False
):
    """(codes, scales, mns, residual) of one side ("k" | "v"): the per-layer parts for
    quant.dequantize_layers (checked layer tables when planned) and the residual rows, stacked
    [L, 1, H, R, D] when planned (a list where layers keep different residual counts), else a
    list of L tensors, or None without a residual. ragged: layers may hold different token
    counts (layered.py's forms)."""
    first = t[f"{side}.0.codes"]
    kernels = quant.kernels_for(first)
    if owner is None or kernels is None or first.device != target:
        return (*_lists(t, side, layers), _residual(t, side, layers))
    key = (side, target)
    plans = _plans(owner)
    plan = plans.get(key)
    if plan is None:
        codes, scales, mns = _lists(t, side, layers)
        try:
            checked = tuple(kernels.as_layers(x, 4, "decode", ragged=ragged) for x in (codes, scales, mns))
        except ValueError:  # mixed layouts: the unplanned path decides (kernel or reference)
            return codes, scales, mns, _residual(t, side, layers)
        plan = plans[key] = (*checked, _stacked(_residual(t, side, layers)))
    return plan


def cached(owner, what: str, source: torch.Tensor, target: torch.device, build: Callable[[], torch.Tensor]) -> torch.Tensor:
    """build() once per form where `source` (a stored tensor) already sits on the CUDA target
    (as a plan: a check that costs a device sync is then paid once), else on every call."""
    if owner is None or target.type != "cuda" or source.device != target:
        return build()
    plans = _plans(owner)
    key = (what, target)
    value = plans.get(key)
    if value is None:
        value = plans[key] = build()
    return value
