"""The operator's few calls to the Kubernetes API, on plain dicts.

Manifests are dicts from end to end, so this thin layer speaks raw REST with
the kubernetes client's transport (auth, TLS, kubeconfig or in-cluster
config) rather than its typed models; each kind the operator touches is
listed once in `PLURALS`, which also makes the RBAC rules derivable.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from kubernetes import client, config

#: (apiVersion, kind) -> resource name, for every kind the operator or the gateway reads or writes.
PLURALS = {
    ("v1", "PersistentVolumeClaim"): "persistentvolumeclaims",
    ("v1", "Service"): "services",
    ("v1", "Pod"): "pods",
    ("v1", "Secret"): "secrets",
    ("v1", "Event"): "events",
    ("apps/v1", "Deployment"): "deployments",
    ("discovery.k8s.io/v1", "EndpointSlice"): "endpointslices",
    ("autoscaling/v2", "HorizontalPodAutoscaler"): "horizontalpodautoscalers",
    ("policy/v1", "PodDisruptionBudget"): "poddisruptionbudgets",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitors",
    ("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet"): "leaderworkersets",
    ("pagoda.dev/v1alpha1", "LLMDeployment"): "llmdeployments",
}

#: The field manager of every server-side apply by the operator.
FIELD_MANAGER = "pagoda-operator"


class ApiError(Exception):
    """A refused API call, with the server's HTTP status and message."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


def path(api_version: str, kind: str, namespace: str | None = None, name: str | None = None,
         subresource: str | None = None) -> str:
    """The REST path of a collection or an object."""
    prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    parts = [prefix]
    if namespace:
        parts.append(f"namespaces/{namespace}")
    parts.append(PLURALS[(api_version, kind)])
    if name:
        parts.append(name)
    if subresource:
        parts.append(subresource)
    return "/".join(parts)


def _selector(pairs: dict[str, str] | None) -> str:
    """A label or field selector requiring each key to have its value."""
    return ",".join(f"{k}={v}" for k, v in (pairs or {}).items())


class Kube:
    """A connection to one API server."""

    def __init__(self, api: client.ApiClient) -> None:
        self.api = api

    @classmethod
    def connect(cls) -> Kube:
        """In-cluster credentials when running in a pod, else the kubeconfig."""
        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        return cls(client.ApiClient())

    def _call(self, method: str, url: str, query: dict[str, str] | None, body: Any, content_type: str,
              timeout: float | tuple[float, float]) -> Any:
        """The response, its body not yet read; a refusal raises ApiError."""
        method, full_url, headers, body, _ = self.api.param_serialize(
            method, url, query_params=list((query or {}).items()),
            header_params={"Content-Type": content_type, "Accept": "application/json"},
            body=body, auth_settings=["BearerToken"])
        response = self.api.call_api(method, full_url, headers, body, _request_timeout=timeout)
        if response.status >= 400:
            data = response.read()
            try:  # a Status object, or plain text for paths the server does not serve
                status = json.loads(data)
            except ValueError:
                status = {"message": data.decode(errors="replace").strip()}
            raise ApiError(response.status, status.get("reason", ""), status.get("message", ""))
        return response

    def request(self, method: str, url: str, *, query: dict[str, str] | None = None,
                body: Any = None, content_type: str = "application/json") -> dict[str, Any]:
        data = self._call(method, url, query, body, content_type, 30).read()
        return json.loads(data) if data else {}

    def watch(self, api_version: str, kind: str, namespace: str | None, *, resource_version: str,
              label_selector: str = "", timeout_seconds: int = 240) -> Iterator[dict[str, Any]]:
        """The watch events ({"type", "object"}) after `resource_version`, until
        the server ends the watch (after about `timeout_seconds`)."""
        query = {"watch": "true", "resourceVersion": resource_version, "allowWatchBookmarks": "true",
                 "timeoutSeconds": str(timeout_seconds)}
        if label_selector:
            query["labelSelector"] = label_selector
        raw = self._call("GET", path(api_version, kind, namespace), query, None, "application/json",
                         (10, timeout_seconds + 30)).response
        try:
            pending = b""
            for chunk in raw.stream(65536, decode_content=True):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                yield from (json.loads(line) for line in lines if line.strip())
        finally:
            raw.release_conn()

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        try:
            return self.request("GET", path(api_version, kind, namespace, name))
        except ApiError as err:
            if err.status == 404:
                return None
            raise

    def list(self, api_version: str, kind: str, namespace: str, *, labels: dict[str, str] | None = None,
             fields: dict[str, str] | None = None) -> list[dict[str, Any]]:
        return self.list_collection(api_version, kind, namespace, _selector(labels), _selector(fields)).get("items", [])

    def list_collection(self, api_version: str, kind: str, namespace: str | None, label_selector: str = "",
                        field_selector: str = "") -> dict[str, Any]:
        """The whole list object: its items and the resourceVersion to watch from."""
        query = {key: value for key, value in (("labelSelector", label_selector), ("fieldSelector", field_selector))
                 if value}
        return self.request("GET", path(api_version, kind, namespace), query=query)

    def apply(self, obj: dict[str, Any], *, field_manager: str = FIELD_MANAGER) -> dict[str, Any]:
        """Server-side apply, taking over fields others changed (drift repair)."""
        meta = obj["metadata"]
        return self.request(
            "PATCH", path(obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"]),
            query={"fieldManager": field_manager, "force": "true"},
            body=obj, content_type="application/apply-patch+yaml")

    def scale_deployment(self, namespace: str, name: str, replicas: int, *, field_manager: str) -> dict[str, Any]:
        """Sets a Deployment's `.spec.replicas` by merge patch (an update, not an apply:
        the HPA may take the field over afterwards without a conflict)."""
        return self.request("PATCH", path("apps/v1", "Deployment", namespace, name),
                            query={"fieldManager": field_manager}, body={"spec": {"replicas": replicas}},
                            content_type="application/merge-patch+json")

    def annotate(self, api_version: str, kind: str, namespace: str, name: str,
                 annotations: dict[str, str], *, field_manager: str) -> dict[str, Any]:
        """Sets annotations of an object by merge patch."""
        return self.request("PATCH", path(api_version, kind, namespace, name), query={"fieldManager": field_manager},
                            body={"metadata": {"annotations": annotations}},
                            content_type="application/merge-patch+json")

    def patch_status(self, api_version: str, kind: str, namespace: str, name: str,
                     status: dict[str, Any]) -> dict[str, Any]:
        """Replaces the fields of `.status` given (merge patch on the status subresource)."""
        return self.request("PATCH", path(api_version, kind, namespace, name, "status"),
                            body={"status": status}, content_type="application/merge-patch+json")

    def serves(self, api_version: str, kind: str) -> bool:
        """Whether the cluster serves this kind (discovery needs no RBAC)."""
        prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        try:
            resources = self.request("GET", prefix).get("resources", [])
        except ApiError as err:
            if err.status == 404:
                return False
            raise
        return any(r.get("kind") == kind for r in resources)

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        """Deletes the object; already gone is fine."""
        try:
            self.request("DELETE", path(api_version, kind, namespace, name))
        except ApiError as err:
            if err.status != 404:
                raise
