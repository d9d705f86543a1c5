# The OpenAI-compatible server (issue 4): its extra, and `make serve` / `make bench-serving`.
EXTRAS := $(EXTRAS),server

.PHONY: serve bench-serving

# Serves the model of `make run` (built if missing) on $(PORT).
serve: venv
	@test -f $(MODEL)/config.json || $(VENV)/bin/pagoda make-tiny-model $(MODEL) --arch $(ARCH)
	$(VENV)/bin/pagoda serve $(MODEL) --port $(PORT)

bench-serving: venv
	@test -f $(MODEL)/config.json || $(VENV)/bin/pagoda make-tiny-model $(MODEL) --arch $(ARCH)
	$(PY) -m bench.serving --model $(MODEL)
