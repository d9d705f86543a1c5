# Local Kubernetes control plane for integration and e2e tests (e2e/cluster/).
# Needs only python3, go and openssl: no venv, so `make cluster-up` is quick.
# The binaries are cached under ~/.cache/pagoda/k8s and reused; `make test`
# builds what is missing first (a fresh machine: see the README's timing).

TEST_PREREQS += cluster-binaries
SLOW_PREREQS += cluster-binaries

.PHONY: cluster-binaries cluster-up cluster-down cluster-status

cluster-binaries:
	$(PYTHON) -m e2e.cluster build

# Prints `export KUBECONFIG=...`; the cluster runs until `make cluster-down`.
cluster-up: cluster-binaries
	@$(PYTHON) -m e2e.cluster up

cluster-down:
	@$(PYTHON) -m e2e.cluster down

cluster-status:
	@$(PYTHON) -m e2e.cluster status
