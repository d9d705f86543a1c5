"""The route table: which endpoints serve which model name.

A pure function of what the API server holds: each LLMDeployment's served
name and adapter names, and the ready endpoints of the EndpointSlices that
the EndpointSlice controller keeps for its Service (the Service's labels,
hence the owner label the operator puts on it, are copied onto them). A pod
that fails readiness or starts terminating leaves its slice, and so the
table, without the gateway probing anything.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from .. import scale_to_zero
from ..manifests.meta import OWNER_LABEL
from ..v1alpha1 import LLMDeployment

logger = logging.getLogger("pagoda.gateway")

#: The engine's port on the Service (operator/manifests/service.py names it).
PORT_NAME = "http"


@dataclass(frozen=True)
class Route:
    """Where requests for one model name go."""

    model: str
    endpoints: tuple[str, ...]
    #: The base model's name, for a LoRA adapter.
    parent: str | None = None
    #: "namespace/name" of each LLMDeployment serving it.
    sources: tuple[str, ...] = ()
    #: Those of `sources` that scale to zero (autoscaling.minReplicas 0): a request
    #: finding no replica asks them for one and waits longer for it.
    zero_scaled: tuple[str, ...] = ()


@dataclass(frozen=True)
class RouteTable:
    """An immutable snapshot; discovery swaps in a new one on every change."""

    routes: dict[str, Route] = field(default_factory=dict)

    def get(self, model: str) -> Route | None:
        return self.routes.get(model)


def _url(address: str, port: int) -> str:
    host = f"[{address}]" if ipaddress.ip_address(address).version == 6 else address
    return f"http://{host}:{port}"


def slice_endpoints(endpoint_slice: dict[str, Any]) -> list[str]:
    """Base URLs of the slice's ready, non-terminating endpoints on the engine port."""
    ports = [p.get("port") for p in endpoint_slice.get("ports") or [] if p.get("name") == PORT_NAME]
    if not ports or ports[0] is None:
        return []
    urls = []
    for endpoint in endpoint_slice.get("endpoints") or []:
        conditions = endpoint.get("conditions") or {}
        # An unset `ready` means ready (the API's convention for consumers).
        if conditions.get("ready") is False or conditions.get("terminating") is True:
            continue
        urls.extend(_url(address, ports[0]) for address in (endpoint.get("addresses") or [])[:1])
    return urls


def build(deployments: Iterable[dict[str, Any]], slices: Iterable[dict[str, Any]]) -> RouteTable:
    """The table for these LLMDeployments and EndpointSlices (any namespaces).

    A name served by several LLMDeployments (a blue/green rollout) routes to
    the pods of all of them. An LLMDeployment the gateway cannot parse (stored
    before a schema change) is skipped, not fatal.
    """
    endpoints: dict[tuple[str, str], list[str]] = {}
    for endpoint_slice in slices:
        meta = endpoint_slice.get("metadata", {})
        owner = (meta.get("labels") or {}).get(OWNER_LABEL)
        if owner:
            endpoints.setdefault((meta.get("namespace", ""), owner), []).extend(slice_endpoints(endpoint_slice))
    merged: dict[str, tuple[list[str], str | None, list[str], list[str]]] = {}
    for body in deployments:
        try:
            resource = LLMDeployment.from_body(body)
        except (KeyError, ValidationError) as exc:
            meta = body.get("metadata", {})
            logger.warning("skipping LLMDeployment %s/%s: %s", meta.get("namespace"), meta.get("name"), exc)
            continue
        urls = endpoints.get((resource.namespace, resource.name), [])
        source = f"{resource.namespace}/{resource.name}"
        served = resource.spec.served_name
        names = [(served, None)] + [(a.name, served) for a in resource.spec.adapters]
        for name, parent in names:
            known, _, sources, zero_scaled = merged.setdefault(name, ([], parent, [], []))
            known.extend(u for u in urls if u not in known)
            sources.append(source)
            if scale_to_zero.enabled(resource):
                zero_scaled.append(source)
    return RouteTable({name: Route(name, tuple(urls), parent, tuple(sorted(sources)), tuple(sorted(zero_scaled)))
                       for name, (urls, parent, sources, zero_scaled) in merged.items()})


def static(backends: Iterable[str]) -> RouteTable:
    """The table of `--backend MODEL=URL` arguments: engines outside Kubernetes
    (or in a cluster without the operator); a model given twice gets both URLs."""
    merged: dict[str, list[str]] = {}
    for item in backends:
        model, sep, url = item.partition("=")
        if not sep or not model or not url.startswith(("http://", "https://")):
            raise ValueError(f"a backend is MODEL=http(s)://HOST:PORT, not {item!r}")
        merged.setdefault(model, []).append(url.rstrip("/"))
    return RouteTable({m: Route(m, tuple(urls), sources=("static",)) for m, urls in merged.items()})
