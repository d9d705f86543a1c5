# The two entry points of the README live here: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
MODEL ?= models/tiny-llama
ARCH ?= llama
PORT ?= 8000

.PHONY: venv run test bench clean

# One virtual environment at the repository root; torch comes from PyPI only.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[engine,test]'
	touch $@

venv: $(VENV)/.installed

# Builds a small random-weight model when none is given, then runs the engine on it.
run: venv
	@test -f $(MODEL)/config.json || $(VENV)/bin/pagoda make-tiny-model $(MODEL) --arch $(ARCH)
	$(VENV)/bin/pagoda generate $(MODEL) --prompt "Hello, my name is" --max-tokens 32

test: venv
	$(VENV)/bin/pytest -q

bench: venv
	$(PY) bench/engine_overhead.py
	$(PY) bench/cpu_throughput.py

clean:
	rm -rf $(VENV) models
