"""Size of the catalog and trace that the replay tests share, and the small scenario (fixtures
in conftest.py; a module of its own name: `conftest` is ambiguous when several test folders
are collected)."""

N, R = 120, 1500  # contexts, requests

SMALL = {
    "name": "small",
    "description": "a SmolLM2-shaped KV on a cpu tier and a disk tier",
    "model": {"name": "SmolLM2", "layers": 30, "kv_heads": 3, "head_dim": 64, "dtype_bytes": 4, "q_heads": 9, "window": 16},
    "prefill_samples": [[128, 0, 0.2], [512, 0, 0.85], [1024, 0, 1.8], [2048, 0, 3.9], [24, 1024, 0.09]],
    "tiers": [{"name": "cpu", "read_bps": 8e9, "share": 80}, {"name": "disk", "read_bps": 1e9, "share": 800}],
    "decode_bps": {"quant": 1e9, "drop+quant": 1e9},
    "context_tokens": {"distribution": "measured"},
    "query_tokens": [18, 20, 22, 24, 30],
    "alpha": 2.0,
    "capacity": 0.2,
}

