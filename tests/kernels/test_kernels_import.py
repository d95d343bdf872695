"""Importing evicctl.kernels never imports Triton (CPU CI runs this; it needs no GPU)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

CHECK = """
import json, sys
import evicctl.kernels as k
import evicctl.manager.tiers.gpu
out = {"triton": "triton" in sys.modules, "names": sorted(k.__all__)}
try:
    out["available"] = k.available()
    k.quantize_keys
    out["attr"] = "ok"
except ImportError as exc:
    out["attr"] = "ImportError"
out["triton_after"] = "triton" in sys.modules
print(json.dumps(out))
"""


def run_check() -> dict:
    env_free = subprocess.run(
        [sys.executable, "-c", CHECK], capture_output=True, text=True, check=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(sys.path), "CUDA_VISIBLE_DEVICES": ""},
    )
    return json.loads(env_free.stdout.strip().splitlines()[-1])


def test_import_pulls_in_no_triton_and_refuses_without_cuda():
    out = run_check()
    assert out["triton"] is False  # the package and the gpu tier import without Triton
    assert {"quantize_keys", "dequantize_values", "gather_tokens", "snapkv_scores"} <= set(out["names"])
    assert out["available"] is False  # no CUDA visible in the subprocess
    assert out["attr"] == "ImportError"
    assert out["triton_after"] is False


def test_unknown_name_is_an_attribute_error():
    import evicctl.kernels as k

    with pytest.raises(AttributeError):
        k.no_such_kernel  # noqa: B018
