"""What the vLLM tests share: whether vLLM is importable here, and why not."""

from __future__ import annotations

import pytest

VLLM_HINT = "vLLM 0.33.0 is not importable here; create .venv-vllm with `bash scripts/vllm-env.sh` and run these tests with it"


def _vllm_error() -> str | None:
    try:
        import vllm.v1.kv_offload.cpu.manager  # noqa: F401
    except ImportError as exc:
        return f"{VLLM_HINT} ({exc})"
    return None


VLLM_ERROR = _vllm_error()
requires_vllm = pytest.mark.skipif(VLLM_ERROR is not None, reason=VLLM_ERROR or "")
