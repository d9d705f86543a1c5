# The two entry points of the README live here: `make run` and `make test`.
# `make` alone sets up and runs the engine, like `make run`.
.DEFAULT_GOAL := run
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
MODEL ?= models/tiny-llama
ARCH ?= llama
PORT ?= 8000

# Targets and test prerequisites contributed by each half of the project
# (operator, local cluster, e2e) live in mk/*.mk; they may append to
# EXTRAS (pip extras of the venv) and TEST_PREREQS.
EXTRAS := engine,test
TEST_PREREQS :=
-include mk/*.mk

.PHONY: venv run test bench clean

# One virtual environment at the repository root; torch comes from PyPI only.
$(VENV)/.installed: pyproject.toml $(wildcard mk/*.mk)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[$(EXTRAS)]'
	touch $@

venv: $(VENV)/.installed

# Builds a small random-weight model when none is given, then runs the engine on it.
run: venv
	@test -f $(MODEL)/config.json || $(VENV)/bin/pagoda make-tiny-model $(MODEL) --arch $(ARCH)
	$(VENV)/bin/pagoda generate $(MODEL) --prompt "Hello, my name is" --max-tokens 32

test: venv $(TEST_PREREQS)
	$(VENV)/bin/pytest -q

bench: venv
	$(PY) -m bench.engine_overhead
	$(PY) -m bench.cpu_throughput

clean:
	rm -rf $(VENV) models
