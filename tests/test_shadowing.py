"""The checkout's kernels/ folder never shadows the `kernels` distribution transformers imports.

transformers (5.25 and newer) imports the Hugging Face `kernels` distribution when it loads a
model. The checkout's top-level kernels/ folder is evicctl.kernels; if the checkout root is on
sys.path it wins the lookup for `kernels`, and loading a model fails. These tests run the
import transformers performs, the way each documented invocation runs it.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

from evicctl.entry import CHECKOUT_ROOT

OURS = CHECKOUT_ROOT / "kernels"
# what transformers' hub_kernels integration imports from the distribution at model load
HF_IMPORT = "from kernels import get_kernel, kernelize, Mode, LayerRepository"


def _run(code: str, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *flags, "-c", code], cwd=CHECKOUT_ROOT, capture_output=True, text=True, timeout=120)


def test_this_test_process_resolves_the_distribution():
    """`make test` runs pytest with -P: the checkout root must not be on this process's path."""
    spec = importlib.util.find_spec("kernels")
    assert spec is not None, "the `kernels` distribution transformers needs is not installed"
    assert not Path(spec.origin).is_relative_to(OURS), f"kernels resolves to the checkout: {spec.origin}"


def test_python_P_from_the_checkout_imports_the_distribution():
    done = _run(f"{HF_IMPORT}; import kernels; print(kernels.__file__)", "-P")
    assert done.returncode == 0, done.stderr
    assert "site-packages" in done.stdout


def test_entry_points_drop_the_checkout_root():
    """`python -m evicctl...` from the checkout: the entry helper runs before any model load."""
    code = "from evicctl.entry import keep_checkout_root_off_path as k; k(); " + HF_IMPORT
    done = _run(code)
    assert done.returncode == 0, done.stderr


def test_the_failure_mode_is_reproduced_and_named():
    """Without -P and without the helper, the folder is found first: the import fails with our
    message (the name transformers asked for would otherwise be missing, as on 2026-12-04)."""
    done = _run(HF_IMPORT)
    assert done.returncode != 0
    assert "evicctl.kernels" in done.stderr and "python -P" in done.stderr


def test_the_transformers_check_sees_the_distribution():
    done = _run("from transformers.utils.import_utils import is_kernels_available as a; "
                "import kernels, sys; print(a(), kernels.__file__)", "-P")
    assert done.returncode == 0, done.stderr
    assert "site-packages" in done.stdout
