"""Triton kernels for the codecs' hot paths, imported as `evicctl.kernels`.

Importing this package never imports Triton and never initialises CUDA. `available()` says
whether the kernels can run here: Triton installed and CUDA present (or Triton's CPU
interpreter switched on with TRITON_INTERPRET=1, which the tests use off the GPU). Reading a
kernel's name (``evicctl.kernels.quantize_keys``) imports the submodule that holds it, and
raises ImportError where the kernels cannot run, so callers keep the torch reference.

Every kernel computes the same function as its torch reference in evicctl.manager
(quant.py, scorers.py): same signatures, same outputs (see each module's docstring for the
floating-point differences that remain).
"""

from __future__ import annotations

if __name__ != "evicctl.kernels":
    # The repository root is on sys.path (python -m / -c run from the checkout): this folder
    # would shadow the `kernels` distribution transformers imports. Say so instead of failing
    # later with a missing name deep inside transformers.
    raise ImportError(
        f"the checkout's kernels/ folder was imported as {__name__!r}; it is evicctl.kernels. "
        "Run with `python -P` (or the `evicctl` command) so the checkout root is not on sys.path."
    )

import importlib
import importlib.util
import os

# public name -> submodule that defines it
_EXPORTS: dict[str, str] = {
    "quantize_keys": "quant",
    "dequantize_keys": "quant",
    "quantize_values": "quant",
    "dequantize_values": "quant",
    "quantize_keys_layers": "quant",
    "dequantize_keys_layers": "quant",
    "quantize_values_layers": "quant",
    "dequantize_values_layers": "quant",
    "gather_tokens": "gather",
    "gather_tokens_layers": "gather",
    "gather_quantize_keys": "gather",
    "gather_quantize_values": "gather",
    "knorm_scores": "scorers",
    "knorm_scores_layers": "scorers",
    "keydiff_scores": "scorers",
    "keydiff_scores_layers": "scorers",
    "snapkv_scores": "scorers",
    "snapkv_scores_layers": "scorers",
    "as_layers": "_layers",  # checked layer tables a caller may keep (decode plans)
}

__all__ = ["available", "interpreting", *_EXPORTS]


def interpreting() -> bool:
    """True when Triton's CPU interpreter is on (TRITON_INTERPRET=1): kernels take CPU tensors."""
    return os.environ.get("TRITON_INTERPRET", "") == "1"


def available() -> bool:
    """Whether the Triton kernels can run here (without importing Triton)."""
    if importlib.util.find_spec("triton") is None:
        return False
    if interpreting():
        return True
    import torch  # torch.cuda.is_available() does not create a CUDA context

    return torch.cuda.is_available()


def __getattr__(name: str):
    submodule = _EXPORTS.get(name)
    if submodule is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if not available():
        raise ImportError(f"evicctl.kernels.{name} needs Triton and CUDA; use the torch reference")
    module = importlib.import_module(f".{submodule}", __name__)
    return getattr(module, name)
