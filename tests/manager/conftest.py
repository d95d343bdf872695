"""Fixtures for the manager tests (helpers live in manager_helpers.py)."""

from __future__ import annotations

import pytest
from manager_helpers import make_config, make_kv


@pytest.fixture
def kv_factory():
    return make_kv


@pytest.fixture
def config_factory(tmp_path):
    def build(**kw):
        return make_config(tmp_path, **kw)

    return build
