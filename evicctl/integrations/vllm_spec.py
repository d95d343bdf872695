"""Build vLLM's scheduler-side CPU offloading manager the way vLLM does, on a CPU machine.

`OffloadingSpecFactory.create_spec` with the CPU spec and a `kv_connector_extra_config` is
exactly what the OffloadingConnector runs inside `vllm serve`; its `get_manager()` returns
the `CPUOffloadingManager` that resolves `eviction_policy` / `cache_policy_module_path`
through `CachePolicyFactory`. Only the model facts are made up here (no model is loaded):
one KV-cache group, `kv_bytes_per_token` per token, `cpu_bytes_to_use` sized to the chunks
asked for. Imports vLLM.
"""

from __future__ import annotations

from dataclasses import dataclass

EVICCTL_POLICY = {"eviction_policy": "EvicctlCachePolicy", "cache_policy_module_path": "evicctl.integrations.vllm"}
POLICIES = {"lru": {"eviction_policy": "lru"}, "arc": {"eviction_policy": "arc"}, "evicctl": EVICCTL_POLICY}
ALIGNMENT_SLACK = 1  # the spec rounds a chunk up to its alignment: ask for this many chunks more


@dataclass(frozen=True)
class ChunkLayout:
    tokens_per_block: int = 16  # vLLM's default GPU block size
    blocks_per_chunk: int = 16  # 256-token chunks
    kv_bytes_per_token: int = 131072  # Llama-3.1-8B bf16: 2 * 32 layers * 8 heads * 128 * 2 B

    @property
    def chunk_tokens(self) -> int:
        return self.tokens_per_block * self.blocks_per_chunk

    @property
    def chunk_bytes(self) -> int:
        return self.chunk_tokens * self.kv_bytes_per_token


def offloading_config(policy: str, num_chunks: int, layout: ChunkLayout = ChunkLayout(), **extra):
    """vLLM's OffloadingConfig for `num_chunks` CPU chunks under the named policy."""
    from vllm.v1.kv_offload.config import (
        OffloadingCacheConfig,
        OffloadingConfig,
        OffloadingGroupConfig,
        OffloadingModelConfig,
        OffloadingParallelConfig,
    )

    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; valid: {', '.join(POLICIES)}")
    bytes_per_block = layout.tokens_per_block * layout.kv_bytes_per_token
    extra_config = {"cpu_bytes_to_use": num_chunks * layout.chunk_bytes, **POLICIES[policy], **extra}
    return OffloadingConfig(
        groups=(OffloadingGroupConfig(layout.tokens_per_block, ("model.layers.0",), 0),),
        worker_kv_bytes_per_block=bytes_per_block,
        enable_kv_cache_events=True,
        extra_config=extra_config,
        engine_id="evicctl-replay",
        model=OffloadingModelConfig("replay", "bfloat16", 0),
        cache=OffloadingCacheConfig(layout.tokens_per_block, layout.blocks_per_chunk),
        parallel=OffloadingParallelConfig(0, 1, 1, 1, 1, 1, 0, 1, None, False),
    )


def build_manager(policy: str, num_chunks: int, layout: ChunkLayout = ChunkLayout(), **extra):
    """vLLM's CPUOffloadingManager for `policy`, built by vLLM's spec factory."""
    from vllm.v1.kv_offload.factory import OffloadingSpecFactory

    spec = OffloadingSpecFactory.create_spec(offloading_config(policy, num_chunks, layout, **extra))
    manager = spec.get_manager()
    if spec.num_chunks != num_chunks:
        raise ValueError(f"vLLM sized the CPU tier at {spec.num_chunks} chunks, not {num_chunks}")
    return manager
