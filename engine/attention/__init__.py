"""The pluggable attention path: metadata built once per step, backends that consume it."""

from pagoda.engine.attention.backend import AttentionBackend, select_backend
from pagoda.engine.attention.metadata import AttentionMetadata

__all__ = ["AttentionBackend", "AttentionMetadata", "select_backend"]
