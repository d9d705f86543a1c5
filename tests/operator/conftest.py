"""Fixtures of the operator's unit tests."""

from __future__ import annotations

from . import namespace_shim

namespace_shim.install()
