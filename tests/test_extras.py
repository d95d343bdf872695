"""An engine embeds the manager with the core dependencies only (pyproject's `dependencies`).

The extras' packages are made unimportable in a fresh interpreter (an import of any of them
raises, as if it were not installed); a real Manager then stores and serves a context, and the
CLI's read commands run. Fails if a core module starts importing an extra at import or use.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

# top-level modules of the extras' distributions (tui, engine, bench, redis, metrics, gpu)
EXTRA_MODULES = ("textual", "transformers", "sentence_transformers", "gguf", "accelerate",
                 "matplotlib", "zstandard", "redis", "prometheus_client", "triton")  # fmt: skip

SCRIPT = textwrap.dedent(
    """
    import importlib.abc, sys
    BLOCKED = set(sys.argv[1].split(","))

    class NotInstalled(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r} (an extra, blocked)")
            return None

    sys.meta_path.insert(0, NotInstalled())
    import torch
    from pathlib import Path
    from evicctl.config import ManagerConfig, TierConfig
    from evicctl.manager import KV, Manager

    root = Path(sys.argv[2])
    config = ManagerConfig(db_path=root / "e.db", cache_dir=root / "cache", tiers=(
        TierConfig("cpu", capacity_bytes=64 << 20), TierConfig("disk", capacity_bytes=1 << 30)))
    # large and slow enough to prefill that the placer keeps it rather than recomputing
    keys = [torch.randn(1, 3, 1024, 64) for _ in range(4)]
    values = [torch.randn(1, 3, 1024, 64) for _ in range(4)]
    with Manager(config) as manager:
        manager.store("doc", KV.full(keys, values), prefill_s=1.8)
        hit = manager.lookup("doc", device="cpu")
        assert hit is not None and hit.tier == "cpu", hit
    from evicctl.cli import main
    sys.argv = ["evicctl", "ls", "--db", str(root / "e.db"), "-o", "json"]
    try:
        main()
    except SystemExit as done:
        assert done.code in (0, None), done.code
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    assert not loaded, loaded
    print("core-only ok")
    """
)


def test_manager_and_cli_run_with_the_core_dependencies_only(tmp_path):
    done = subprocess.run([sys.executable, "-P", "-c", SCRIPT, ",".join(EXTRA_MODULES), str(tmp_path)],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "core-only ok" in done.stdout
    assert '"id":"doc"' in done.stdout and '"tier":"cpu"' in done.stdout
