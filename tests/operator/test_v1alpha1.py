"""Parsing of the resource: model sources and derived values."""

from __future__ import annotations

import pytest

from pagoda.operator.source import ModelSource, parse_source
from pagoda.operator.v1alpha1 import LLMDeploymentSpec


@pytest.mark.parametrize(("text", "parsed"), [
    ("hf://Qwen/Qwen3-0.6B", ModelSource(scheme="hf", repo="Qwen/Qwen3-0.6B")),
    ("hf://org/name@refs/pr/3", ModelSource(scheme="hf", repo="org/name", revision="refs/pr/3")),
    ("pvc://models", ModelSource(scheme="pvc", claim="models")),
    ("pvc://models/llama/8b", ModelSource(scheme="pvc", claim="models", path="llama/8b")),
])
def test_parse_source(text: str, parsed: ModelSource) -> None:
    assert parse_source(text) == parsed


@pytest.mark.parametrize("text", [
    "Qwen/Qwen3", "hf://no-slash", "hf:///x/y", "hf://org/name@", "pvc://Upper", "pvc://claim//abs", "s3://b/k", "",
])
def test_malformed_sources_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="malformed model source"):
        parse_source(text)


def test_gpus_follow_tensor_parallelism_unless_set() -> None:
    spec = LLMDeploymentSpec.model_validate({"model": {"source": "hf://a/b"}, "engine": {"tensorParallelSize": 4}})
    assert spec.gpus == 4
    assert spec.model_copy(update={"resources": spec.resources.model_copy(update={"gpus": 0})}).gpus == 0


def test_unknown_fields_are_ignored_like_the_api_server_prunes_them() -> None:
    spec = LLMDeploymentSpec.model_validate({"model": {"source": "hf://a/b"}, "future": 1})
    assert spec.model.source == "hf://a/b"
