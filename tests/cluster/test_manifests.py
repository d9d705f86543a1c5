"""Simulated GPU nodes and the provisioner's decisions, without a cluster."""

from __future__ import annotations

from typing import Any

from e2e.cluster import manifests, provisioner


def _claim(name: str, *, phase: str = "Pending", cls: str = manifests.STORAGE_CLASS,
           volume: str = "") -> dict[str, Any]:
    return {"kind": "PersistentVolumeClaim",
            "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}"},
            "spec": {"storageClassName": cls, "volumeName": volume, "accessModes": ["ReadWriteMany"],
                     "resources": {"requests": {"storage": "20Gi"}}},
            "status": {"phase": phase}}


def test_gpu_node_advertises_gpus_and_is_managed_by_kwok() -> None:
    node = manifests.gpu_node("n0", 8)
    assert node["status"]["allocatable"][manifests.GPU_RESOURCE] == "8"
    assert node["status"]["capacity"] == node["status"]["allocatable"]
    key, value = manifests.KWOK_ANNOTATION
    assert node["metadata"]["annotations"][key] == value
    assert node["metadata"]["labels"]["nvidia.com/gpu.present"] == "true"


def test_pending_claim_gets_a_volume_bound_to_it() -> None:
    create, delete = provisioner.reconcile([_claim("cache")])
    assert delete == []
    [volume] = create
    assert volume["spec"]["claimRef"]["uid"] == "uid-cache"
    assert volume["spec"]["capacity"]["storage"] == "20Gi"
    assert volume["spec"]["accessModes"] == ["ReadWriteMany"]
    assert volume["spec"]["storageClassName"] == manifests.STORAGE_CLASS


def test_bound_foreign_and_already_provisioned_claims_are_left_alone() -> None:
    existing = manifests.volume_for(_claim("done"))
    items = [_claim("bound", phase="Bound", volume="pv-1"), _claim("other", cls="gp2"), _claim("done"),
             {"kind": "PersistentVolume", **existing}]
    assert provisioner.reconcile(items) == ([], [])


def test_released_volumes_of_ours_are_deleted() -> None:
    ours = {**manifests.volume_for(_claim("gone")), "status": {"phase": "Released"}}
    foreign = {"kind": "PersistentVolume", "metadata": {"name": "nfs"},
               "spec": {"persistentVolumeReclaimPolicy": "Delete"}, "status": {"phase": "Released"}}
    assert provisioner.reconcile([ours, foreign]) == ([], [ours["metadata"]["name"]])


def test_storage_class_is_default_only_when_asked() -> None:
    key = "storageclass.kubernetes.io/is-default-class"
    assert manifests.storage_class(default=True)["metadata"]["annotations"][key] == "true"
    assert key not in manifests.storage_class(default=False)["metadata"]["annotations"]
