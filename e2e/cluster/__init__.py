"""A real Kubernetes control plane on loopback for pagoda's integration and
e2e tests: pinned upstream binaries built from the Go module proxy (build.py)
and a launcher that runs them with KWOK-simulated GPU nodes (launcher.py)."""
