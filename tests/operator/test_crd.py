"""The CRD: generated from the typed models, committed current, and valid."""

from __future__ import annotations

from typing import Any

import yaml

from pagoda.operator import crd, flags, v1alpha1

from .cel_cases import CASES
from .kube_schemas import validate


def _walk(schema: dict[str, Any], path: str = ""):
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            yield from _walk(schema[key], f"{path}[]")


def _root() -> dict[str, Any]:
    return crd.build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_committed_crd_is_current() -> None:
    assert crd.CRD_PATH.read_text() == crd.render_yaml(), (
        "crds/llmdeployment.yaml is stale: run `python -m pagoda.operator.crd > crds/llmdeployment.yaml`")


def test_crd_is_a_valid_custom_resource_definition() -> None:
    validate(yaml.safe_load(crd.CRD_PATH.read_text()))


def test_schema_is_structural() -> None:
    """Every node has a type (or is int-or-string / preserve-unknown) and no
    JSON-Schema-only constructs survive."""
    for path, node in _walk(_root()):
        assert "$ref" not in node and "title" not in node, path
        if node.get("x-kubernetes-int-or-string"):
            assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}], path
        else:
            assert "anyOf" not in node and node.get("type"), path


def test_server_side_defaults_equal_the_models_defaults() -> None:
    """Applying the schema's defaults to a minimal spec yields what pydantic
    assumes, so the operator and the API server agree on every default."""

    def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
        if isinstance(value, dict) and "properties" in schema:
            for name, sub in schema["properties"].items():
                if name not in value and "default" in sub:
                    value[name] = sub["default"]
                if name in value:
                    value[name] = apply_defaults(sub, value[name])
        return value

    def contained(part: Any, whole: Any) -> bool:
        if isinstance(part, dict):
            return isinstance(whole, dict) and all(k in whole and contained(v, whole[k]) for k, v in part.items())
        return part == whole

    minimal = {"model": {"source": "hf://org/name"}}
    defaulted = apply_defaults(_root()["properties"]["spec"], {"model": {"source": "hf://org/name"}})
    assert defaulted["engine"]["gpuMemoryUtilization"] == 0.9  # defaults do reach nested objects
    parsed = v1alpha1.LLMDeploymentSpec.model_validate(defaulted)
    assert parsed == v1alpha1.LLMDeploymentSpec.model_validate(minimal)
    assert contained(defaulted, parsed.model_dump(by_alias=True))


def test_every_cel_rule_has_a_message() -> None:
    rules = [r for _, node in _walk(_root()) for r in node.get("x-kubernetes-validations", [])]
    assert len(rules) >= 9
    assert all(r["message"] and not r["message"].startswith("failed") for r in rules)


def test_cel_refuses_managed_flags_named_in_one_place() -> None:
    engine = _root()["properties"]["spec"]["properties"]["engine"]["properties"]
    rule = engine["extraArgs"]["x-kubernetes-validations"][0]["rule"]
    assert all(f"'{flag}'" in rule for flag in flags.MANAGED_FLAGS)


def test_status_and_scale_subresources_and_printer_columns() -> None:
    version = crd.build_crd()["spec"]["versions"][0]
    assert version["subresources"]["status"] == {}
    assert version["subresources"]["scale"]["specReplicasPath"] == ".spec.replicas"
    names = [c["name"] for c in version["additionalPrinterColumns"]]
    assert names[:5] == ["Model", "Ready", "Phase", "Endpoint", "Age"]
    assert crd.build_crd()["spec"]["names"]["shortNames"] == ["llmd"]


def test_every_rule_has_a_case() -> None:
    """A new rule without a refusal case in cel_cases.py fails."""
    expected = [message for _, _, message in CASES]
    for rule_message in (r["message"] for _, node in _walk(_root()) for r in node.get("x-kubernetes-validations", [])):
        assert any(rule_message in text for text in expected), rule_message


def test_peering_crds_are_valid() -> None:
    documents = list(yaml.safe_load_all((crd.CRD_PATH.parent / "kopf-peering.yaml").read_text()))
    assert [d["spec"]["names"]["kind"] for d in documents] == ["ClusterKopfPeering", "KopfPeering"]
    for document in documents:
        validate(document)
