"""pagoda end-to-end suite and the local Kubernetes control plane it runs on."""
