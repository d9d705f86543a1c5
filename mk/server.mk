# The OpenAI-compatible server (issue 4): its extra, and `make bench-serving`
# (`make run` in the Makefile serves the model).
EXTRAS := $(EXTRAS),server

.PHONY: bench-serving

bench-serving: venv $(MODEL)/config.json
	$(PY) -m bench.serving --model $(MODEL)
