# The session's cluster, shared with any other suite that imports it.
from e2e.cluster.pytest_plugin import kube_cluster  # noqa: F401
