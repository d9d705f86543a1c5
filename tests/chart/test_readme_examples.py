"""The README's LLMDeployment examples are valid resources of the CRD's model."""

from __future__ import annotations

import re

import pytest
import yaml

from pagoda.operator import v1alpha1

from .helm import REPO

_SECTION = (REPO / "README.md").read_text().partition("## Installing on Kubernetes")[2]
EXAMPLES = [yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", _SECTION, re.S)]


def test_the_three_examples_are_there() -> None:
    gpus = [v1alpha1.LLMDeploymentSpec.model_validate(e["spec"]).gpus for e in EXAMPLES]
    assert gpus == [0, 1, 2]
    assert EXAMPLES[2]["spec"]["autoscaling"]["enabled"]


@pytest.mark.parametrize("example", EXAMPLES, ids=[e["metadata"]["name"] for e in EXAMPLES])
def test_example_is_a_valid_llmdeployment(example: dict) -> None:
    assert (example["apiVersion"], example["kind"]) == (v1alpha1.API_VERSION, v1alpha1.KIND)
    v1alpha1.LLMDeploymentSpec.model_validate(example["spec"])
