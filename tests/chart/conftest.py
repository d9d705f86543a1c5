"""The chart's tests import the operator's single sources (RBAC, settings)."""

from tests.operator import namespace_shim

namespace_shim.install()
