"""What to do when a test's real dependency (redis-server, Triton, kvpress) is missing.

On a developer's machine the test skips with the install hint. Under CI (`CI=true`, which
`.ci/run` sets) everything is installed by the run itself, so a missing piece is a failure:
a CI run cannot turn green by skipping what it was meant to exercise.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def missing(reason: str) -> NoReturn:
    if in_ci():
        pytest.fail(f"CI must run this test, but {reason}", pytrace=False)
    pytest.skip(reason)
