"""make_redis_tier: the redis tier a TierConfig describes (shared by default, or private)."""

from __future__ import annotations

from evicctl.config import TierConfig
from evicctl.manager.tiers.remote import DEFAULT_URL, RedisTier
from evicctl.manager.tiers.remote_shared import SharedRedisTier
from evicctl.manager.tiers.tier import configured_capacity_bytes, host_available_bytes


def make_redis_tier(cfg: TierConfig, rank: int) -> RedisTier:
    """The tier a ``redis`` TierConfig describes: shared by every manager on the cluster (or
    server) unless ``cfg.shared`` is False. A capacity fraction is of the server's maxmemory,
    or of available host memory when it has none."""
    from evicctl.manager.tiers.remote_client import connect

    url = cfg.url or DEFAULT_URL
    client = connect(url)

    def redis_available() -> int:
        maxmemory = int(client.config_get("maxmemory").get("maxmemory", 0))
        return maxmemory or host_available_bytes()

    capacity = configured_capacity_bytes(cfg, redis_available)
    if not cfg.shared:
        return RedisTier(url, capacity_bytes=capacity, name=cfg.name, rank=rank, client=client)
    return SharedRedisTier(url, capacity_bytes=capacity, client=client, name=cfg.name, rank=rank,
                           namespace=cfg.namespace, model=cfg.model or "default", holder=cfg.engine,
                           tenant_quotas=cfg.tenant_quotas)  # fmt: skip
