# The README's two commands:  `make demo` (set up + main job) and `make test` (set up + test suite).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test test-all bench

setup: $(VENV)/.setup-done

$(VENV)/.setup-done: pyproject.toml scripts/setup.sh
	bash scripts/setup.sh
	touch $@

demo: setup
	$(VENV)/bin/searche1 demo

test: setup
	$(PY) -m pytest -q

test-all: setup
	$(PY) -m pytest -q -m "slow or not slow"

bench: setup
	$(PY) benchmarks/retrieval.py
