"""The demo's defaults, importable without torch so `evicctl demo --help` can print them."""

from __future__ import annotations

DEFAULT_CONTEXTS = 12
DEFAULT_RATE_RPS = 0.3  # a hit takes ~1.7 s, a miss ~3.5 s on 2 cores: leaves idle time to profile
DEFAULT_ZIPF = 1.0
DEFAULT_GPU_BYTES = 256 << 20
DEFAULT_CPU_BYTES = 64 << 20  # ~1 raw context; all 12 at int4 (~7 MB each) do not fit either
DEFAULT_DISK_BYTES = 1 << 30
# /metrics of the demo's manager (9464: the port OpenTelemetry's Prometheus exporter uses by
# convention, free on a machine that runs no such exporter); 0 = any free port
DEFAULT_METRICS_PORT = 9464
