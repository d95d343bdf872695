"""evicctl's cache policy for vLLM's CPU KV offloading. Import this module, not vllm_policy:
it says how to install vLLM when it is missing.

    --kv-transfer-config '{"kv_connector": "OffloadingConnector", "kv_role": "kv_both",
      "kv_connector_extra_config": {"cpu_bytes_to_use": 68719476736,
        "eviction_policy": "EvicctlCachePolicy",
        "cache_policy_module_path": "evicctl.integrations.vllm"}}'
"""

from __future__ import annotations

try:
    import vllm.v1.kv_offload.cpu.policies.base  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised in a fresh interpreter by the tests
    raise ImportError(
        "evicctl.integrations.vllm needs vLLM 0.33.0 (its CPU KV offloading policies); "
        "install it in its own environment with `bash scripts/vllm-env.sh` "
        f"(see docs/vllm.md). Import failed with: {exc}"
    ) from exc

from evicctl.integrations.vllm_config import VllmPolicyConfig
from evicctl.integrations.vllm_policy import CONTEXT_PARAM, LABEL_PARAM, EvicctlCachePolicy

__all__ = ["CONTEXT_PARAM", "LABEL_PARAM", "EvicctlCachePolicy", "VllmPolicyConfig"]
