"""The README's LLMDeployment examples are valid resources: against the CRD's
schema (unknown fields refused, as strict field validation would) and its model."""

from __future__ import annotations

import jsonschema
import pytest

from pagoda.operator import v1alpha1

from . import llmdeployments
from .helm import REPO

_README = (REPO / "README.md").read_text()

#: Every LLMDeployment the README shows; the install section has the three examples.
EXAMPLES = llmdeployments.in_markdown(_README)
INSTALL_EXAMPLES = llmdeployments.in_markdown(_README.partition("## Installing on Kubernetes")[2])


def test_the_three_examples_are_there() -> None:
    gpus = [v1alpha1.LLMDeploymentSpec.model_validate(e["spec"]).gpus for e in INSTALL_EXAMPLES]
    assert gpus == [0, 1, 2]
    assert INSTALL_EXAMPLES[2]["spec"]["autoscaling"]["enabled"]


@pytest.mark.parametrize("example", EXAMPLES, ids=[e["metadata"]["name"] for e in EXAMPLES])
def test_example_is_a_valid_llmdeployment(example: dict) -> None:
    llmdeployments.validate(example)


def test_an_unknown_field_is_refused() -> None:
    typo = {**EXAMPLES[0], "spec": {**EXAMPLES[0]["spec"], "replica": 2}}
    with pytest.raises((ValueError, jsonschema.ValidationError)):
        llmdeployments.validate(typo)
