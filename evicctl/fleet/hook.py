"""attach_fleet: what a Manager calls once its tiers exist. Imports nothing heavy: the agent
(and through it the redis client) only when a shared remote tier is configured."""

from __future__ import annotations


def shared_tier_of(manager):
    """The manager's shared remote tier, or None."""
    return next((t for t in manager.tiers if getattr(t, "shared", False)), None)


def attach_fleet(manager):
    """Start a FleetAgent for `manager` if it has a shared tier; returns it (or None). The tier
    learns each context's tenant (for quotas) from the manager's state."""
    tier = shared_tier_of(manager)
    if tier is None:
        return None
    from evicctl.fleet.agent import FleetAgent

    def tenant_of(context_id: str) -> str:
        ctx = manager.rt.contexts.get(context_id)
        return ctx.tenant if ctx is not None else "default"

    tier.tenant_of = tenant_of
    return FleetAgent(manager, tier).start()
