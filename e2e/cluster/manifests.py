"""What the test cluster holds besides the control plane: simulated GPU nodes
and a storage class whose claims get bound.

Pure functions returning API objects, so they are tested without a cluster.
The nodes are fakes driven by KWOK, but they carry real capacity: the real
scheduler counts `nvidia.com/gpu` on them and leaves pods Pending with its
own reason when there are too few.
"""

from __future__ import annotations

from typing import Any

#: Annotation that tells KWOK which nodes it simulates (passed to it as a selector).
KWOK_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
#: Label on every node this package creates, to list or delete them.
NODE_LABEL = ("pagoda.dev/e2e-node", "true")
GPU_RESOURCE = "nvidia.com/gpu"
#: Storage class served by provisioner.py; the local cluster's default.
STORAGE_CLASS = "pagoda-e2e"
PROVISIONER = "pagoda.dev/e2e-provisioner"


def gpu_node(name: str, gpus: int, *, cpu: str = "32", memory: str = "256Gi",
             gpu_product: str = "NVIDIA-H100-80GB-HBM3") -> dict[str, Any]:
    """A node with `gpus` GPUs as the NVIDIA device plugin and GPU feature
    discovery would advertise them.

    Status is given at creation, as a kubelet registering itself does; KWOK
    then keeps the node Ready and renews its lease.
    """
    resources = {"cpu": cpu, "memory": memory, "pods": "110", "ephemeral-storage": "1Ti",
                 GPU_RESOURCE: str(gpus)}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {KWOK_ANNOTATION[0]: KWOK_ANNOTATION[1]},
            "labels": {
                NODE_LABEL[0]: NODE_LABEL[1],
                "type": "kwok",
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "nvidia.com/gpu.present": "true",
                "nvidia.com/gpu.count": str(gpus),
                "nvidia.com/gpu.product": gpu_product,
            },
        },
        "status": {"capacity": resources, "allocatable": dict(resources)},
    }


def storage_class(*, default: bool) -> dict[str, Any]:
    """The class whose claims provisioner.py binds; `default` makes claims
    without a class land on it (the local cluster has no other)."""
    annotations = {"storageclass.kubernetes.io/is-default-class": "true"} if default else {}
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": STORAGE_CLASS, "annotations": annotations},
        "provisioner": PROVISIONER,
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "Immediate",
        "allowVolumeExpansion": True,
    }


def volume_for(claim: dict[str, Any]) -> dict[str, Any]:
    """A PersistentVolume pre-bound to `claim`, sized as requested.

    hostPath is never mounted (KWOK runs no containers); it is the simplest
    source the API accepts. The provisioned-by annotation tells the PV
    controller to leave the volume's deletion to provisioner.py.
    """
    meta, spec = claim["metadata"], claim["spec"]
    name = f"pvc-{meta['uid']}"
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": name, "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER}},
        "spec": {
            "capacity": {"storage": spec["resources"]["requests"]["storage"]},
            "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
            "volumeMode": spec.get("volumeMode", "Filesystem"),
            "storageClassName": STORAGE_CLASS,
            "persistentVolumeReclaimPolicy": "Delete",
            "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                         "namespace": meta["namespace"], "name": meta["name"], "uid": meta["uid"]},
            "hostPath": {"path": f"/var/lib/pagoda-e2e/{name}", "type": "DirectoryOrCreate"},
        },
    }


def needs_volume(claim: dict[str, Any]) -> bool:
    """A claim of our class that no volume is bound to yet."""
    spec = claim.get("spec", {})
    return (spec.get("storageClassName") == STORAGE_CLASS and not spec.get("volumeName")
            and claim.get("status", {}).get("phase", "Pending") == "Pending"
            and not claim["metadata"].get("deletionTimestamp"))


def released(volume: dict[str, Any]) -> bool:
    """A volume of ours whose claim is gone: deleted, as reclaimPolicy says."""
    return (volume["metadata"].get("annotations", {}).get("pv.kubernetes.io/provisioned-by") == PROVISIONER
            and volume.get("status", {}).get("phase") in ("Released", "Failed")
            and volume["spec"].get("persistentVolumeReclaimPolicy") == "Delete")


def as_list(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """Wraps objects in a v1 List, which `kubectl apply -f -` takes in one call."""
    return {"apiVersion": "v1", "kind": "List", "items": objects}
