# The Helm chart, images and dashboards (charts/pagoda, Dockerfile): their
# tests (tests/chart) need helm (built by cluster-binaries) and Prometheus,
# which this installs from Debian's package on a fresh machine.

TEST_PREREQS += chart-prereqs

.PHONY: chart-prereqs chart-crds chart-test

chart-prereqs: cluster-binaries
	@command -v prometheus >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null; then SUDO=sudo; \
	  else echo "chart tests need Debian's prometheus package: apt-get install prometheus" >&2; exit 1; fi; \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q --no-install-recommends prometheus; }

# Copies the project's CRDs into the chart (a test checks that they are equal).
chart-crds:
	rm -f charts/pagoda/crds/*.yaml && cp crds/*.yaml charts/pagoda/crds/

chart-test: venv chart-prereqs
	$(VENV)/bin/pytest -q tests/chart
