# The e2e suite (e2e/): the chart installed with helm, the operator run as a
# local process with the chart's ServiceAccount, scenarios on simulated GPU
# nodes. Local control plane by default; PAGODA_CLUSTER=external runs it on
# the cluster of KUBECONFIG instead. `make test` (and so .ci/run) runs it first;
# its `slow` scenario (autoscaling) runs with `make test-slow`.
# The operator extra it needs is added to the venv by mk/operator.mk; the
# autoscaling scenario also runs prometheus-adapter (built by cluster-binaries)
# and Debian's Prometheus (installed by chart-prereqs).

TEST_PREREQS += e2e

.PHONY: e2e

e2e: venv cluster-binaries chart-prereqs
	$(VENV)/bin/pytest -q -m "not slow" e2e
