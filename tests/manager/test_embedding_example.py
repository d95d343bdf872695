"""The README's embedding example for engine developers, run for real (keep the two in sync)."""

from __future__ import annotations

import contextlib
import io
import os

import pytest

EXAMPLE = '''
import torch
from evicctl.config import ManagerConfig, TierConfig
from evicctl.manager.kv import KV
from evicctl.manager.manager import Manager

config = ManagerConfig(db_path="state/evicctl.db", cache_dir="state/cache", tiers=(
    TierConfig("cpu", capacity_bytes=256 << 20), TierConfig("disk", capacity_bytes=2 << 30)))
with Manager(config) as manager:                      # starts the control thread
    keys = [torch.randn(1, 3, 1024, 64) for _ in range(30)]   # your engine's cache, per layer
    values = [torch.randn(1, 3, 1024, 64) for _ in range(30)]
    manager.store("doc-42", KV.full(keys, values), label="a 1k-token document", prefill_s=1.8)
    hit = manager.lookup("doc-42", device="cpu")     # None on a miss: prefill, then store again
    print(hit.tier, hit.codec, f"{hit.load_s + hit.decode_s:.4f} s")
    manager.report_prefill(new_tokens=20, cached_tokens=hit.kv.kept_tokens, seconds=0.05)
    manager.record_profile("doc-42", "int8", quality=0.99, quality_sd=0.01, n_queries=8)
'''


@pytest.fixture
def in_tmp(tmp_path):
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        yield tmp_path
    finally:
        os.chdir(old)


def test_example_is_short_and_runs(in_tmp):
    code_lines = [line for line in EXAMPLE.strip().splitlines() if line.strip()]
    assert len(code_lines) <= 16
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(EXAMPLE, "readme_example", "exec"), {})
    tier, codec, _ = out.getvalue().split(maxsplit=2)
    assert (tier, codec) == ("cpu", "none")
    assert (in_tmp / "state" / "evicctl.db").exists()

    from evicctl.store.database import Store

    with Store.open(in_tmp / "state" / "evicctl.db", readonly=True) as store:
        placement = store.query("SELECT tier, codec FROM placements WHERE context_id = 'doc-42'")[0]
        assert (placement["tier"], placement["codec"]) == ("cpu", "none")
        profile = store.query("SELECT quality FROM profiles WHERE context_id = 'doc-42' AND codec = 'int8'")
        assert profile[0]["quality"] == 0.99
        stopped = store.query("SELECT stopped_at FROM manager")[0]["stopped_at"]
        assert stopped is not None
