"""The fleet: several managers (engines, hosts) sharing one remote tier, and the read model
operators see them through. agent (each manager's registration, publishing, leadership and
fleet commands), policy (the shared tier's eviction order, pure), view and command (the CLI's
side), sharing (cross-engine lookups), keys (the fleet's key names). Nothing here is imported
unless a shared redis tier is configured or a --fleet command runs."""
