"""Importing the library is cheap and has no side effects (checked in a fresh interpreter)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import evicctl

PACKAGE = Path(evicctl.__file__).parent
FORBIDDEN = ("textual", "typer", "triton", "sentence_transformers")
CORE = ("evicctl", "evicctl.errors", "evicctl.config", "evicctl.store.database", "evicctl.store.connect", "evicctl.snapshot.read",
        "evicctl.snapshot.detail", "evicctl.control",
        "evicctl.timeparse", "evicctl.manager")


def _library_modules() -> list[str]:
    manager = sorted(f"evicctl.manager.{p.stem}" for p in (PACKAGE / "manager").glob("*.py") if p.stem != "__init__")
    return [*CORE, *manager]


PROBE = textwrap.dedent("""
    import importlib, json, sys
    forbidden = {forbidden!r}
    report = []
    for name in {modules!r}:
        importlib.import_module(name)
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in forbidden)
        cuda = "torch" in sys.modules and sys.modules["torch"].cuda.is_initialized()
        report.append({{"module": name, "forbidden": loaded, "cuda": bool(cuda)}})
    print(json.dumps(report))
""")


def test_importing_the_library_loads_no_ui_no_triton_no_cuda_and_opens_no_database(tmp_path):
    modules = _library_modules()
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state"), "EVICCTL_DB": str(tmp_path / "db" / "e.db"),
           "HOME": str(tmp_path / "home"), "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "")}
    code = PROBE.format(forbidden=FORBIDDEN, modules=modules)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [r["module"] for r in report] == modules
    for r in report:
        assert r["forbidden"] == [], f"importing {r['module']} loaded {r['forbidden']}"
        assert not r["cuda"], f"importing {r['module']} initialised CUDA"
    created = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert created == [], f"importing created files: {created}"


def test_cli_module_imports_without_opening_a_database(tmp_path):
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state"), "HOME": str(tmp_path / "home")}
    env.pop("EVICCTL_DB", None)
    code = "import sys, evicctl.cli; assert 'textual' not in sys.modules and 'torch' not in sys.modules"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert list(tmp_path.rglob("*")) == []


def test_codec_names_and_cli_codec_validation_do_not_import_torch(tmp_path):
    """`evicctl pin --codec` and `evicctl show` parse and size codec names without torch (~2 s)."""
    code = textwrap.dedent("""
        import sys
        from evicctl.manager.codecs import names as codec_names
        assert 'torch' not in sys.modules, 'importing codec_names loaded torch'
        assert codec_names.validate_codec_name('knorm@0.50+int8') == 'knorm@0.5+int8'
        assert codec_names.stored_bytes('snapkv@0.5+int4', 1024, 30, 3, 64, 2) > 0
        from evicctl.console.common import validate_codec
        assert validate_codec('int4') == 'int4'
        try:
            validate_codec('zip')
        except KeyError:
            pass
        import evicctl.snapshot.detail
        loaded = sorted(m for m in sys.modules if m.split('.')[0] == 'torch')
        assert not loaded, f'loaded {loaded[:3]}'
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
