"""evicctl: KV-cache manager (joint compression and eviction)."""
__version__ = "0.1.0"
