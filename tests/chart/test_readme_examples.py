"""The README's LLMDeployment examples are valid resources: against the CRD's
schema (unknown fields refused, as strict field validation would) and its model."""

from __future__ import annotations

import re

import jsonschema
import pytest
import yaml

from pagoda.operator import v1alpha1

from .helm import REPO

_README = (REPO / "README.md").read_text()
_CRD = yaml.safe_load((REPO / "crds" / "llmdeployment.yaml").read_text())


def _llm_deployments(text: str) -> list[dict]:
    blocks = (yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", text, re.S))
    return [b for b in blocks if isinstance(b, dict) and b.get("kind") == v1alpha1.KIND]


#: Every LLMDeployment the README shows; the install section has the three examples.
EXAMPLES = _llm_deployments(_README)
INSTALL_EXAMPLES = _llm_deployments(_README.partition("## Installing on Kubernetes")[2])


def test_the_three_examples_are_there() -> None:
    gpus = [v1alpha1.LLMDeploymentSpec.model_validate(e["spec"]).gpus for e in INSTALL_EXAMPLES]
    assert gpus == [0, 1, 2]
    assert INSTALL_EXAMPLES[2]["spec"]["autoscaling"]["enabled"]


@pytest.mark.parametrize("example", EXAMPLES, ids=[e["metadata"]["name"] for e in EXAMPLES])
def test_example_is_a_valid_llmdeployment(example: dict) -> None:
    assert (example["apiVersion"], example["kind"]) == (v1alpha1.API_VERSION, v1alpha1.KIND)
    v1alpha1.LLMDeploymentSpec.model_validate(example["spec"])
    [version] = [v for v in _CRD["spec"]["versions"] if v["name"] == example["apiVersion"].split("/")[1]]
    jsonschema.validate(example["spec"], _strict(version["schema"]["openAPIV3Schema"]["properties"]["spec"]))


def _strict(schema: dict) -> dict:
    """The schema with unknown fields refused wherever it lists the known ones."""
    out = dict(schema)
    if "properties" in out:
        out["properties"] = {k: _strict(v) for k, v in out["properties"].items()}
        if not out.get("x-kubernetes-preserve-unknown-fields"):
            out.setdefault("additionalProperties", False)
    if isinstance(out.get("items"), dict):
        out["items"] = _strict(out["items"])
    return out
