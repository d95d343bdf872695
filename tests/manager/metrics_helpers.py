"""Helpers for the metrics tests: a real manager serving /metrics, scraped over HTTP."""

from __future__ import annotations

import dataclasses
import urllib.request
from pathlib import Path

from manager_helpers import KV_BYTES, make_config

from evicctl.manager.manager import Manager

# cpu holds 2 whole contexts, disk 4: storing 8 evicts from cpu and drops from disk
CPU_BYTES, DISK_BYTES = 2 * KV_BYTES, 4 * KV_BYTES
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def metrics_manager(root: Path, **config) -> Manager:
    """A started manager with real cpu and disk tiers serving /metrics on a free port."""
    cfg = make_config(root, cpu_bytes=CPU_BYTES, disk_bytes=DISK_BYTES, codecs=("none",), metrics_port=0)
    return Manager(dataclasses.replace(cfg, **config), probe=False).start()


def scrape(url: str) -> dict:
    """name -> family, parsed by the client library's own parser from an HTTP GET."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(families: dict, sample_name: str, **labels) -> float:
    """Sum of the samples named `sample_name` whose labels include `labels` (0.0 if none)."""
    family = families[_family_name(sample_name, families)]
    return sum(s.value for s in family.samples
               if s.name == sample_name and all(s.labels.get(k) == v for k, v in labels.items()))  # fmt: skip


def is_created(name: str, families: dict) -> bool:
    """The text format serves a counter's or histogram's `_created` timestamp as a gauge family."""
    return name.endswith("_created") and name.removesuffix("_created") in families


def sample_names(families: dict) -> set[str]:
    """Every series name a query may use: families' names with their type's suffixes."""
    return {f.name + suffix for f in families.values() if not is_created(f.name, families)
            for suffix in SUFFIXES.get(f.type, ("",))}  # fmt: skip


def _family_name(sample_name: str, families: dict) -> str:
    for suffix in ("_total", "_bucket", "_sum", "_count", ""):
        base = sample_name.removesuffix(suffix) if suffix else sample_name
        if base in families:
            return base
    raise KeyError(f"no metric family for {sample_name}; have {sorted(families)}")
