# The Helm chart, images and dashboards (charts/pagoda, Dockerfile). Their
# tests (tests/chart) need helm (built by cluster-binaries), Prometheus and
# podman (daemonless, with runc and debootstrap for local base images): this
# installs the Debian packages on a fresh machine, as root or through sudo.

TEST_PREREQS += chart-prereqs
SLOW_PREREQS += chart-prereqs
CHART_DEBS := prometheus podman runc debootstrap

.PHONY: chart-prereqs chart-crds chart-test

chart-prereqs: cluster-binaries
	@missing=$$(for p in $(CHART_DEBS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	[ -z "$$missing" ] || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null; then SUDO=sudo; \
	  else echo "chart tests need Debian packages: apt-get install $$missing" >&2; exit 1; fi; \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q --no-install-recommends $$missing; }

# Copies the project's CRDs into the chart (a test checks that they are equal).
chart-crds:
	rm -f charts/pagoda/crds/*.yaml && cp crds/*.yaml charts/pagoda/crds/

chart-test: venv chart-prereqs
	$(VENV)/bin/pytest -q tests/chart
