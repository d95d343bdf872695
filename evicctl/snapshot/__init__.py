"""The immutable read model the CLI and the dashboard render: read (contexts, tiers, events, manager) and detail (one context's options)."""
