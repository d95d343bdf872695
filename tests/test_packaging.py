"""A built wheel ships every subpackage and data file: build it, install it apart, import
every module from it (not from the checkout), and read the schema and the data files."""

from __future__ import annotations

import subprocess
import sys
import zipfile

from evicctl.entry import CHECKOUT_ROOT

IMPORT_ALL = """
import importlib, pathlib, sys, zipfile
target, wheel = sys.argv[1], sys.argv[2]
import evicctl
assert pathlib.Path(evicctl.__file__).is_relative_to(target), evicctl.__file__
names = sorted({n[:-3].replace("/", ".").removesuffix(".__init__")
                for n in zipfile.ZipFile(wheel).namelist() if n.startswith("evicctl/") and n.endswith(".py")})
# the vLLM policy's modules import vLLM on purpose: it lives in its own environment
VLLM = {"evicctl.integrations.vllm", "evicctl.integrations.vllm_policy", "evicctl.integrations.vllm_replay"}
assert VLLM <= set(names), VLLM - set(names)
for name in names:
    if name.endswith("__main__") or name in VLLM:
        continue
    module = importlib.import_module(name)
    assert pathlib.Path(module.__file__).is_relative_to(target), (name, module.__file__)
from evicctl.store.database import SCHEMA_FILE
assert SCHEMA_FILE.is_file() and SCHEMA_FILE.is_relative_to(target)
from evicctl.replay.scenario import DATA_DIR
assert (DATA_DIR / "h200_design_costs.json").is_file()
print(len(names), "modules")
"""


def test_the_wheel_ships_every_module(tmp_path):
    out = tmp_path / "wheel"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out),
                    str(CHECKOUT_ROOT)], check=True, capture_output=True, timeout=300)  # fmt: skip
    (wheel,) = out.glob("evicctl-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert not any(n.startswith("kernels/") for n in names), "kernels/ must ship as evicctl/kernels/"
    assert "evicctl/kernels/quant.py" in names and "evicctl/store.sqlite_schema.sql" in names
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=300)  # fmt: skip
    done = subprocess.run([sys.executable, "-P", "-c", IMPORT_ALL, str(target), str(wheel)], cwd=tmp_path,
                          env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert int(done.stdout.split()[0]) > 80
