"""Fixtures for the vLLM integration tests.

Tests that need vLLM skip, with the reason, when vLLM's offloading code cannot be imported in
the running interpreter: vLLM never goes into the project's .venv. Run them for real from
the vLLM environment: `bash scripts/vllm-env.sh && .venv-vllm/bin/python -P -m pytest -q tests/integrations`.
"""

from __future__ import annotations

import pytest


@pytest.fixture
def no_record(monkeypatch):
    """The evicctl policy without a store (contract tests): nothing touches the user's database."""
    monkeypatch.setenv("EVICCTL_VLLM_RECORD", "0")


@pytest.fixture
def vllm_db(tmp_path, monkeypatch):
    """A fresh store the evicctl policy records into, flushed every 20 ms."""
    path = tmp_path / "vllm.db"
    monkeypatch.setenv("EVICCTL_DB", str(path))
    monkeypatch.setenv("EVICCTL_VLLM_RECORD", "1")
    monkeypatch.setenv("EVICCTL_VLLM_FLUSH_S", "0.02")
    return path
