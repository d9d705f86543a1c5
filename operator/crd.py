"""Generates the `LLMDeployment` CustomResourceDefinition from the typed models.

Pydantic writes JSON Schema; Kubernetes wants a *structural* OpenAPI v3
schema: no `$ref`, no `anyOf` with null for optional fields, defaults only
where the API server should apply them.  `structural()` does that
translation, so `v1alpha1.py` stays the one place the API is written.

    python -m pagoda.operator.crd > crds/llmdeployment.yaml
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

from . import v1alpha1

#: Where the generated CRD is committed (and the chart copies it from).
CRD_PATH = Path(__file__).resolve().parent.parent / "crds" / "llmdeployment.yaml"

#: JSON Schema keywords Kubernetes does not use; dropped.
_DROPPED = {"title"}


def structural(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Translates one pydantic JSON Schema node into a structural schema node."""
    if "$ref" in schema:
        target = defs[schema["$ref"].rsplit("/", 1)[-1]]
        schema = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
    if "anyOf" in schema and not schema.get("x-kubernetes-int-or-string"):
        branches = [b for b in schema["anyOf"] if b.get("type") != "null"]
        if len(branches) != 1:
            raise ValueError(f"cannot express a union in a structural schema: {schema['anyOf']}")
        outer = {k: v for k, v in schema.items() if k != "anyOf"}
        # Validations of both levels apply: keep them all.
        rules = outer.pop("x-kubernetes-validations", []) + branches[0].get("x-kubernetes-validations", [])
        schema = structural({**branches[0], **outer}, defs)
        if rules:
            schema["x-kubernetes-validations"] = rules
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _DROPPED:
            continue
        if key == "properties":
            out[key] = {name: structural(sub, defs) for name, sub in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = structural(value, defs)
        elif key == "const":  # a one-value Literal; structural schemas know only enum
            out["enum"] = [value]
        elif key == "default":
            default = _default(value)
            if default is not None:
                out[key] = default
        else:
            out[key] = value
    if "properties" in out:
        out.setdefault("type", "object")
    return out


def _default(value: Any) -> Any:
    """The default the API server should apply, or None for none.

    A nested object defaults to `{}` so the server recurses into it and applies
    its fields' own defaults; empty lists are left out, as absent and empty
    mean the same to the operator.
    """
    if value is None or value == []:
        return None
    return {} if isinstance(value, dict) else value


def schema_of(model: type[v1alpha1.BaseModel]) -> dict[str, Any]:
    """The structural schema of one model, with nested models inlined."""
    raw = model.model_json_schema(by_alias=True, mode="serialization")
    return structural(raw, raw.pop("$defs", {}))


def build_crd() -> dict[str, Any]:
    """The CustomResourceDefinition object for `llmdeployments.pagoda.dev`."""
    spec_schema = schema_of(v1alpha1.LLMDeploymentSpec)
    spec_schema["description"] = (v1alpha1.LLMDeploymentSpec.__doc__ or "").strip()
    status_schema = schema_of(v1alpha1.LLMDeploymentStatus)
    status_schema["description"] = (v1alpha1.LLMDeploymentStatus.__doc__ or "").strip()
    root = {
        "type": "object",
        "description": "An OpenAI-compatible, autoscaled endpoint serving one model with `pagoda serve`.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec_schema,
            "status": status_schema,
        },
        "x-kubernetes-validations": [v1alpha1.rule(
            f"self.metadata.name.size() <= {v1alpha1.MAX_NAME_LENGTH}"
            " && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')",
            f"metadata.name must be at most {v1alpha1.MAX_NAME_LENGTH} characters of a-z, 0-9 and '-', "
            "starting with a letter: it names the Service and the other children",
        )],
    }
    columns = [
        ("Model", "string", ".spec.model.source", 0),
        ("Ready", "string", ".status.ready", 0),
        ("Phase", "string", ".status.phase", 0),
        ("Endpoint", "string", ".status.endpoint", 0),
        ("Age", "date", ".metadata.creationTimestamp", 0),
        ("Served-As", "string", ".status.model", 1),
    ]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{v1alpha1.PLURAL}.{v1alpha1.GROUP}",
            "labels": {"app.kubernetes.io/part-of": "pagoda"},
        },
        "spec": {
            "group": v1alpha1.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": v1alpha1.KIND,
                "listKind": f"{v1alpha1.KIND}List",
                "plural": v1alpha1.PLURAL,
                "singular": v1alpha1.SINGULAR,
                "shortNames": list(v1alpha1.SHORT_NAMES),
                "categories": ["pagoda"],
            },
            "versions": [{
                "name": v1alpha1.VERSION,
                "served": True,
                "storage": True,
                "schema": {"openAPIV3Schema": root},
                "subresources": {
                    "status": {},
                    "scale": {
                        "specReplicasPath": ".spec.replicas",
                        "statusReplicasPath": ".status.replicas",
                        "labelSelectorPath": ".status.selector",
                    },
                },
                "additionalPrinterColumns": [
                    {"name": name, "type": kind, "jsonPath": path, **({"priority": prio} if prio else {})}
                    for name, kind, path, prio in columns
                ],
            }],
        },
    }


class _PlainDumper(yaml.SafeDumper):
    """Writes shared sub-objects out in full: anchors would only puzzle readers."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def render_yaml() -> str:
    """The committed file's exact text."""
    header = "# Generated by `python -m pagoda.operator.crd` from operator/v1alpha1.py; do not edit.\n"
    return header + yaml.dump(build_crd(), Dumper=_PlainDumper, sort_keys=False, width=120)


if __name__ == "__main__":
    sys.stdout.write(render_yaml())
