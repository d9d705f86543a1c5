# The operator half: its extra in the venv, CRD generation and its checks.
EXTRAS := $(EXTRAS),operator

.PHONY: crds operator-test operator-bench

# Regenerates crds/ from the typed models in operator/v1alpha1.py.
crds: venv
	$(PY) -m pagoda.operator.crd > crds/llmdeployment.yaml

operator-test: venv
	$(VENV)/bin/pytest -q tests/operator

operator-bench: venv
	$(PY) bench/operator_reconcile.py
