# Two commands on a fresh machine: `make demo` and `make test`.
# `make install` installs exactly the locked set (requirements.txt and requirements/data.lock.txt, hashes checked); `make lock`
# regenerates it; `make test-latest` runs the suite against the newest versions pyproject allows.

# any CPython the lock supports (3.11 and newer); override with `make PY=python3.12`
PY      ?= $(shell for p in python3.11 python3.12 python3.13 python3; do command -v $$p >/dev/null 2>&1 && { echo $$p; break; }; done)
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
LOCKS   := requirements.txt requirements/data.lock.txt

# torch comes from one explicit source, never from whatever index a machine's pip happens to
# use: PyPI's Linux wheel is a multi-GB CUDA build. The `+cpu` local version exists only on
# PyTorch's CPU index (or a local copy of it), so a wrong source fails instead of installing
# CUDA. A folder that already holds the wheel (TORCH_WHEELS) is used offline instead of the
# index. GPU users: make install TORCH_VERSION=2.13.0 TORCH_INDEX=https://download.pytorch.org/whl/cu128
TORCH_VERSION ?= 2.13.0+cpu
TORCH_INDEX   ?= https://download.pytorch.org/whl/cpu
TORCH_WHEELS  ?= $(firstword $(wildcard /opt/wheels))
TORCH_SOURCE  := $(if $(TORCH_WHEELS),--no-index --find-links $(TORCH_WHEELS),--index-url $(TORCH_INDEX))

# the test command: -P keeps the working directory off sys.path, so the top-level kernels/
# folder can never shadow the `kernels` distribution transformers imports (see tests/test_shadowing.py)
PYTEST  = $(1)/python -P -m pytest -q

.PHONY: install demo test test-latest test-timing lint bench lock clean vllm-env test-vllm bench-vllm fleet-demo faults

install: $(STAMP)

$(STAMP): pyproject.toml Makefile $(LOCKS)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --no-deps $(TORCH_SOURCE) "torch==$(TORCH_VERSION)"
	$(BIN)/python -m pip install -q --no-deps --require-hashes $(addprefix -r ,$(LOCKS))
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: install
	$(BIN)/evicctl demo $(ARGS)

# Off the GPU the Triton kernels run a second time through Triton's CPU interpreter (small
# shapes), so kernels/ is exercised on every run; on a GPU the first run covers them.
test: install
	$(call PYTEST,$(BIN)) $(PYTEST_ARGS)
	TRITON_INTERPRET=1 $(call PYTEST,$(BIN)) tests/kernels $(PYTEST_ARGS)

# Timing comparisons on a shared machine are noisy: they run here, never in the default suite.
test-timing: install
	$(call PYTEST,$(BIN)) -m timing $(PYTEST_ARGS)

# The newest versions the ranges in pyproject.toml allow, in a venv of their own: drift shows
# here before users meet it. torch stays on the same explicit source.
test-latest:
	rm -rf .venv-latest && $(PY) -m venv .venv-latest
	.venv-latest/bin/python -m pip install -q --no-deps $(TORCH_SOURCE) "torch==$(TORCH_VERSION)"
	.venv-latest/bin/python -m pip install -q --upgrade --upgrade-strategy eager -e '.[all]' "torch==$(TORCH_VERSION)"
	.venv-latest/bin/python -m pip install -q --no-deps --require-hashes -r requirements/data.lock.txt
	.venv-latest/bin/python -m pip list --format=freeze > .venv-latest/versions.txt
	$(call PYTEST,.venv-latest/bin) $(PYTEST_ARGS)
	TRITON_INTERPRET=1 $(call PYTEST,.venv-latest/bin) tests/kernels $(PYTEST_ARGS)

# vLLM's CPU KV offloading with evicctl's policy: its own environment (never .venv), see docs/vllm.md
vllm-env: .venv-vllm/.installed
.venv-vllm/.installed: scripts/vllm-env.sh requirements/vllm.txt $(LOCKS) pyproject.toml
	PY=$(PY) bash scripts/vllm-env.sh
	touch $@
test-vllm: vllm-env
	$(call PYTEST,.venv-vllm/bin) tests/integrations $(PYTEST_ARGS)
bench-vllm: vllm-env
	.venv-vllm/bin/python -P benchmarks/vllm_policy_bench.py $(ARGS)

# Three engines with their managers sharing a 3-node Redis Cluster on this machine; the
# dashboard shows the fleet (see docs/fleet.md)
FLEET_DIR ?= /tmp/evicctl-fleet
fleet-demo: install
	mkdir -p $(FLEET_DIR) && scripts/redis-cluster.sh start $(FLEET_DIR)/cluster 7100
	for e in e0 e1 e2; do \
	  $(BIN)/python -P -m evicctl.fleet.worker --url redis://127.0.0.1:7100 --root $(FLEET_DIR) --engine $$e \
	    --seed $$RANDOM --requests 60 --serve-s 300 > $(FLEET_DIR)/$$e.jsonl 2>$(FLEET_DIR)/$$e.log & \
	done; sleep 3; $(BIN)/evicctl top --fleet redis://127.0.0.1:7100; \
	kill $$(jobs -p) 2>/dev/null; scripts/redis-cluster.sh stop $(FLEET_DIR)/cluster

# Faults, load and hostile input on real processes (RELIABILITY.md); ~50 min on 2 cores (the
# load at 10,000 contexts ~25 of them); the filesystem rows need mount rights.
# Quick: make faults ARGS="--crashes 10 --fuzz 500 --only crash,hostile"
faults: install
	$(BIN)/python -P benchmarks/faults.py $(ARGS)

lint: install
	$(BIN)/ruff check evicctl kernels tests bench

bench: install
	$(BIN)/python -P benchmarks/store_bench.py

# Regenerate the lock (needs uv: `pip install uv`). One universal file for every supported
# Python; torch is left out of it and installed by its own step above.
lock:
	uv pip compile pyproject.toml --extra all --universal --python-version 3.11 --generate-hashes \
	  --find-links $(or $(TORCH_WHEELS),$(TORCH_INDEX)) -c requirements/torch-cpu.txt \
	  --no-emit-package torch --custom-compile-command "make lock" -o requirements.txt
	uv pip compile requirements/data.in --no-deps --universal --python-version 3.11 --generate-hashes \
	  --custom-compile-command "make lock" -o requirements/data.lock.txt

clean:
	rm -rf $(VENV) .venv-latest .pytest_cache
