"""Where the kernel tests run: CUDA, else Triton's CPU interpreter (TRITON_INTERPRET=1), else skip."""

from __future__ import annotations

import importlib.util
import os

import pytest
from needs import missing

torch = pytest.importorskip("torch")

INTERPRET = os.environ.get("TRITON_INTERPRET", "") == "1"
CUDA = torch.cuda.is_available()
if not (CUDA or INTERPRET):
    # the main run off the GPU: `make test` runs these again with TRITON_INTERPRET=1
    pytest.skip("kernel tests need CUDA (or TRITON_INTERPRET=1 with Triton installed)", allow_module_level=True)
if importlib.util.find_spec("triton") is None:
    missing("Triton is not installed (the `gpu` extra; make install puts it in .venv)")
DEVICE = "cuda" if CUDA else "cpu"


def assert_same(got, want, what: str = "") -> None:
    """Bit-exact on CUDA; within one bf16 step under the interpreter (it truncates to bf16)."""
    got, want = got.cpu(), want.cpu()
    assert got.shape == want.shape and got.dtype == want.dtype, (what, got.shape, want.shape, got.dtype, want.dtype)
    assert not torch.isnan(got).any(), f"{what}: NaN (unwritten output?)"
    if INTERPRET and got.dtype == torch.bfloat16:
        step = want.float().abs().clamp_min(1e-30) * 2.0**-7
        assert bool(((got.float() - want.float()).abs() <= step).all()), what
        return
    if not torch.equal(got, want):
        diff = (got.float() - want.float()).abs()
        raise AssertionError(f"{what}: {int((got != want).sum())} of {got.numel()} differ, max |diff| {diff.max().item()}")


def rel_err(got, want) -> float:
    """||got - want|| / ||want|| in float64."""
    g, w = got.double(), want.double()
    return float((g - w).norm() / w.norm().clamp_min(1e-300))


def kv_like(shape, dtype, gen, *, outliers: bool = True):
    """Random keys/values like a model's: a few outlier channels, a per-channel offset."""
    *_, d = shape
    x = torch.randn(shape, generator=gen)
    if outliers:
        chan = 1.0 + 8.0 * (torch.rand(d, generator=gen) < 0.05)
        x = x * chan + torch.randn(d, generator=gen)
    return x.to(dtype).to(DEVICE)
