# The README's two commands:  `make demo` (set up + main job) and `make test` (set up + test suite).
# The demo needs only the `model` extra; the tests need every CPU extra (dense retrieval, HF datasets, pytest).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup setup-demo demo test test-all bench

setup: $(VENV)/.setup-all

setup-demo: $(VENV)/.setup-model

$(VENV)/.setup-all: pyproject.toml scripts/setup.sh
	EXTRAS=model,dense,hf,dev bash scripts/setup.sh
	touch $@ $(VENV)/.setup-model

$(VENV)/.setup-model: pyproject.toml scripts/setup.sh
	EXTRAS=model bash scripts/setup.sh
	touch $@

demo: setup-demo
	$(VENV)/bin/searche1 demo

test: setup
	$(PY) -m pytest -q

test-all: setup
	$(PY) -m pytest -q -m "slow or not slow"

bench: setup
	$(PY) benchmarks/retrieval.py
