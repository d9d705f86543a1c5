# The two entry points of the README live here: `make run` and `make test`.
# `make` alone sets up and serves the engine, like `make run`.
.DEFAULT_GOAL := run
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
MODEL ?= models/tiny-llama
ARCH ?= llama
PORT ?= 8000

# Targets and test prerequisites contributed by each half of the project
# (operator, local cluster, e2e) live in mk/*.mk; they may append to
# EXTRAS (pip extras of the venv), TEST_PREREQS and SLOW_PREREQS.
EXTRAS := engine,test
TEST_PREREQS :=
SLOW_PREREQS :=
-include mk/*.mk

.PHONY: venv run generate test test-slow bench clean

# One virtual environment at the repository root; torch comes from PyPI only.
$(VENV)/.installed: pyproject.toml $(wildcard mk/*.mk)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[$(EXTRAS)]'
	touch $@

venv: $(VENV)/.installed

# A small random-weight model, built when MODEL names none.
$(MODEL)/config.json: | venv
	$(VENV)/bin/pagoda make-tiny-model $(MODEL) --arch $(ARCH)

# Serves MODEL (the tiny one by default) on an OpenAI-compatible API at $(PORT).
run: venv $(MODEL)/config.json
	$(VENV)/bin/pagoda serve $(MODEL) --port $(PORT)

# One offline batch through the engine, printed: no server.
generate: venv $(MODEL)/config.json
	$(VENV)/bin/pagoda generate $(MODEL) --prompt "Hello, my name is" --max-tokens 32

test: venv $(TEST_PREREQS)
	$(VENV)/bin/pytest -q -m "not slow"

# The heavier tests (marked `slow`: more families and kernel variants of what `make test` proves, the
# Prometheus/helm/image/proxy suites, autoscaling end to end); .ci/run runs them after `make test`.
test-slow: venv $(SLOW_PREREQS)
	$(VENV)/bin/pytest -q -m slow tests e2e

bench: venv
	$(PY) -m bench.engine_overhead
	$(PY) -m bench.cpu_throughput

clean:
	rm -rf $(VENV) models
