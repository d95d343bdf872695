#!/usr/bin/env bash
# The vLLM test/bench environment: the project's locked set plus vLLM 0.33.0 without its declared
# dependencies (they pull a CUDA torch), only what its CPU offloading code imports
# (requirements/vllm.txt, hashes checked). Never the project's .venv: vLLM stays out of the core.
#
#   bash scripts/vllm-env.sh                 # creates .venv-vllm
#   VENV=/path/to/env bash scripts/vllm-env.sh
#   .venv-vllm/bin/python -P -m pytest -q tests/integrations
#   .venv-vllm/bin/python -P benchmarks/vllm_policy_bench.py
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PY:-$(for p in python3.11 python3.12 python3.13 python3; do command -v $p >/dev/null 2>&1 && { echo $p; break; }; done)}"
VENV="${VENV:-.venv-vllm}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0+cpu}"
TORCH_INDEX="${TORCH_INDEX:-https://download.pytorch.org/whl/cpu}"
TORCH_WHEELS="${TORCH_WHEELS:-$( [ -d /opt/wheels ] && echo /opt/wheels || true )}"
if [ -n "$TORCH_WHEELS" ]; then TORCH_SOURCE=(--no-index --find-links "$TORCH_WHEELS"); else TORCH_SOURCE=(--index-url "$TORCH_INDEX"); fi
PIP=("$VENV/bin/python" -m pip install -q --no-deps)

test -x "$VENV/bin/python" || "$PY" -m venv "$VENV"
echo '*' > "$VENV/.gitignore"   # the whole environment stays out of git, wherever it lives
"${PIP[@]}" "${TORCH_SOURCE[@]}" "torch==$TORCH_VERSION"
"${PIP[@]}" --require-hashes -r requirements.txt -r requirements/data.lock.txt
"${PIP[@]}" --no-build-isolation -e .
"${PIP[@]}" --require-hashes -r requirements/vllm.txt

# Checked as a user would meet it: vLLM's CPU offloading manager with evicctl's policy by name,
# and torch still the CPU build.
EVICCTL_VLLM_RECORD=0 "$VENV/bin/python" -P - <<'PY'
import torch
from evicctl.integrations.vllm_spec import build_manager
m = build_manager("evicctl", 8)
assert type(m._policy).__name__ == "EvicctlCachePolicy", type(m._policy)
assert not torch.version.cuda, f"a CUDA torch came in: {torch.__version__}"
print(f"ok: vLLM {__import__('vllm').__version__}, torch {torch.__version__}, {type(m).__name__} with EvicctlCachePolicy")
PY
