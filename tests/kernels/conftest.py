"""Fixtures for the kernel tests: fresh random inputs and poisoned kernel outputs.

The kernel test modules skip themselves without CUDA. With TRITON_INTERPRET=1 and Triton
installed they run on the CPU through Triton's interpreter (slow; small shapes only), which
is how the kernels are checked off the GPU; the interpreter rounds float32 -> bfloat16 by
truncation, so bf16 outputs there are compared to within one bf16 step instead of exactly.
"""

from __future__ import annotations

import random

import pytest


@pytest.fixture
def gen(request):
    """A torch.Generator with a fresh seed (printed on failure for a rerun)."""
    import torch

    seed = random.SystemRandom().randrange(2**31)
    request.node.user_properties.append(("seed", seed))
    print(f"seed={seed}")
    return torch.Generator().manual_seed(seed)


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch):
    """Every output a kernel allocates starts as NaN / 0xA5, so unwritten elements show."""
    from evicctl.kernels import _layers  # torch only: no Triton import

    monkeypatch.setattr(_layers, "POISON_OUTPUTS", True)
    yield
