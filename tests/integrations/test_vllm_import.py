"""The core never imports vLLM; the integration says how to install it when it is missing.
These run in any environment (no vLLM needed)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from evicctl.errors import UsageError
from evicctl.integrations.vllm_config import VllmPolicyConfig
from evicctl.integrations.vllm_score import ChunkPricer, log_add

BLOCK_VLLM = (
    "import sys\n"
    "class Block:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name == 'vllm' or name.startswith('vllm.'):\n"
    "            raise ModuleNotFoundError(f\"No module named '{name}'\")\n"
    "sys.meta_path.insert(0, Block())\n"
)


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True, timeout=120)


def test_core_and_integration_helpers_never_import_vllm():
    code = (
        "import sys, json\n"
        "import evicctl, evicctl.manager, evicctl.cli, evicctl.integrations\n"
        "import evicctl.integrations.vllm_config, evicctl.integrations.vllm_score\n"
        "import evicctl.integrations.vllm_commands, evicctl.integrations.vllm_recorder\n"
        "print(json.dumps(sorted(m for m in sys.modules if m == 'vllm' or m.startswith('vllm.'))))\n"
    )
    out = _run(code)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == []


def test_missing_vllm_is_an_importerror_that_says_how_to_install():
    out = _run(BLOCK_VLLM + "import evicctl.integrations.vllm\n")
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: evicctl.integrations.vllm needs vLLM 0.33.0")
    assert "scripts/vllm-env.sh" in last


def test_config_from_env_parses_and_rejects_typos(tmp_path):
    cfg = VllmPolicyConfig.from_env({"EVICCTL_VLLM_CHUNK_TOKENS": "512", "EVICCTL_VLLM_DB_PATH": str(tmp_path / "x.db"),
                                     "EVICCTL_VLLM_RECORD": "off", "OTHER": "1"})  # fmt: skip
    assert (cfg.chunk_tokens, cfg.record, cfg.db_path) == (512, False, tmp_path / "x.db")
    assert cfg.chunk_bytes == 512 * 131072
    with pytest.raises(UsageError, match="did you mean EVICCTL_VLLM_CHUNK_TOKENS"):
        VllmPolicyConfig.from_env({"EVICCTL_VLLM_CHUNK_TOKEN": "512"})
    with pytest.raises(UsageError, match="not a valid value"):
        VllmPolicyConfig.from_env({"EVICCTL_VLLM_RECORD": "maybe"})


def test_deeper_chunks_save_more_and_log_add_is_exact():
    pricer = ChunkPricer((0.04, 2.3e-5, 0.0, 5.9e-10), chunk_tokens=256, chunk_bytes=256 * 131072, read_bps=5.35e10)
    saved = [pricer.saved_s(256 * i) for i in (1, 8, 64)]
    assert saved == sorted(saved) and saved[0] > 0
    # a 256-token chunk: 5.9 ms of compute against 0.63 ms to read 32 MiB back from host
    assert saved[0] == pytest.approx(2.3e-5 * 256 + 5.9e-10 * 256**2 - 256 * 131072 / 5.35e10)
    assert log_add(0.0, 0.0) == pytest.approx(0.6931471805599453)
    assert log_add(1000.0, 0.0) == pytest.approx(1000.0)
