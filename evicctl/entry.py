"""What every `python -m evicctl...` entry point does before its real work.

`python -m` (and `python -c`) put the working directory first on sys.path. From a checkout's
root that makes the top-level `kernels/` folder (shipped as `evicctl.kernels`) importable as
`kernels`, shadowing the `kernels` distribution that transformers imports when it loads a
model (seen with transformers 5.25). The console script `evicctl` and `python -P` never add
the directory; the `-m` entry points call `keep_checkout_root_off_path()` first.
"""

from __future__ import annotations

import sys
from pathlib import Path

CHECKOUT_ROOT = Path(__file__).resolve().parents[1]


def keep_checkout_root_off_path() -> None:
    """Drop the checkout's root (and '' standing for it) from sys.path; evicctl stays imported."""
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != CHECKOUT_ROOT]
