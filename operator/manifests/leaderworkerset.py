"""A LeaderWorkerSet (sigs.k8s.io/lws) for replicas that span several machines.

One group of `engine.nnodes` pods is one replica: the leader runs `pagoda
serve` as node 0 (the engine and the HTTP server), the workers the same pod
headless, each with its index in the group as its node rank; all meet at the
leader's address, which LWS injects into every container. A lost pod breaks
the whole replica's collectives, so the group is recreated as one.
"""

from __future__ import annotations

from typing import Any

from .. import flags
from ..config import OperatorConfig
from ..v1alpha1 import LLMDeployment
from .deployment import pod_template, replicas
from .meta import metadata

API_VERSION = "leaderworkerset.x-k8s.io/v1"
KIND = "LeaderWorkerSet"
#: Where LeaderWorkerSet comes from, for the message when a cluster lacks it.
PROJECT = "sigs.k8s.io/lws"
#: Label LWS puts on each pod of a group: its index there, "0" for the leader.
WORKER_INDEX_LABEL = "leaderworkerset.sigs.k8s.io/worker-index"
#: Environment LWS injects into every container of a group.
LEADER_ADDRESS_ENV = "LWS_LEADER_ADDRESS"
WORKER_INDEX_ENV = "LWS_WORKER_INDEX"


def spans_nodes(resource: LLMDeployment) -> bool:
    """Whether a replica is a LeaderWorkerSet group rather than a Deployment's pod."""
    return resource.spec.engine.nnodes > 1


def workload(resource: LLMDeployment) -> tuple[str, str]:
    """apiVersion and kind of the object that runs the replicas (the HPA's scale target)."""
    return (API_VERSION, KIND) if spans_nodes(resource) else ("apps/v1", "Deployment")


def leader_labels(resource: LLMDeployment) -> dict[str, str]:
    """What selects the serving pods besides the owner's labels: the leaders
    of a multi-node replica (workers have no HTTP server), nothing more otherwise."""
    return {WORKER_INDEX_LABEL: "0"} if spans_nodes(resource) else {}


def _node_args(resource: LLMDeployment, rank: str) -> list[str]:
    # $(VAR) is expanded by the kubelet from the container's environment, where LWS put it.
    return [flags.NNODES, str(resource.spec.engine.nnodes), flags.NODE_RANK, rank,
            flags.MASTER_ADDR, f"$({LEADER_ADDRESS_ENV})", flags.MASTER_PORT, str(flags.RENDEZVOUS_PORT)]


def render(resource: LLMDeployment, config: OperatorConfig) -> dict[str, Any]:
    """The LeaderWorkerSet of a resource whose replicas span several machines."""
    worker_args = [*_node_args(resource, f"$({WORKER_INDEX_ENV})"), flags.HEADLESS]
    group = {"size": resource.spec.engine.nnodes, "restartPolicy": "RecreateGroupOnPodRestart",
             "leaderTemplate": pod_template(resource, config, _node_args(resource, "0")),
             "workerTemplate": pod_template(resource, config, worker_args, serving=False)}
    # As the Deployment: a new group comes up before an old one goes, so capacity holds during a rollout.
    rollout = {"type": "RollingUpdate", "rollingUpdateConfiguration": {"maxSurge": 1, "maxUnavailable": 0}}
    spec = {**replicas(resource), "leaderWorkerTemplate": group, "rolloutStrategy": rollout}
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata(resource), "spec": spec}
