"""The RBAC rules: valid, least privilege."""

from __future__ import annotations

from pagoda.operator import kube, rbac

from .kube_schemas import validate


def test_cluster_role_is_valid() -> None:
    validate(rbac.cluster_role())


def test_no_wildcards_and_secrets_are_never_listed() -> None:
    for group, resources, verbs, why in rbac.RULES:
        assert "*" not in resources and "*" not in verbs and why
        if "secrets" in resources:
            assert verbs == ["get"]


def test_every_kind_the_operator_touches_is_granted() -> None:
    granted = {resource for _, resources, _, _ in rbac.RULES for resource in resources}
    assert set(kube.PLURALS.values()) <= granted
