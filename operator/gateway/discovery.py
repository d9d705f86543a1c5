"""Keeps the route table current by watching the API server.

One reflector per kind and namespace lists the objects, then watches from the
list's resourceVersion, applying each event to its copy; a watch the server
ends is resumed from the last version seen, an expired version (410 Gone)
or an error relists after a pause. Every change rebuilds the table
(`routes.build`) and hands it to the callback, from the reflector's thread.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from .. import v1alpha1
from ..kube import Kube
from ..manifests.meta import OWNER_LABEL
from . import routes

logger = logging.getLogger("pagoda.gateway")

#: Seconds between attempts after an error.
RETRY_PAUSE_S = 2.0
WATCHED = (
    (v1alpha1.API_VERSION, v1alpha1.KIND, ""),
    # Only the slices of Services the operator made (their labels are copied onto them).
    ("discovery.k8s.io/v1", "EndpointSlice", OWNER_LABEL),
)


class Reflector:
    """The current objects of one kind in one namespace (None: all of them)."""

    def __init__(self, kube: Kube, api_version: str, kind: str, namespace: str | None, label_selector: str,
                 on_change: Callable[[], None]) -> None:
        self.kube = kube
        self.api_version, self.kind, self.namespace, self.label_selector = api_version, kind, namespace, label_selector
        self.on_change = on_change
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.synced = threading.Event()

    def _relist(self) -> str:
        listed = self.kube.list_collection(self.api_version, self.kind, self.namespace, self.label_selector)
        self.objects = {_key(o): o for o in listed.get("items", [])}
        self.synced.set()
        self.on_change()
        return listed["metadata"]["resourceVersion"]

    def _follow(self, version: str, stop: threading.Event) -> str | None:
        """Applies watch events until the watch ends; the version to resume
        from, or None when it must relist."""
        for event in self.kube.watch(self.api_version, self.kind, self.namespace, resource_version=version,
                                     label_selector=self.label_selector):
            if stop.is_set():
                return version
            kind, obj = event.get("type"), event.get("object") or {}
            if kind == "ERROR":
                logger.info("watch of %s ended: %s", self.kind, obj.get("message"))
                return None
            version = obj.get("metadata", {}).get("resourceVersion", version)
            if kind == "BOOKMARK":
                continue
            if kind == "DELETED":
                self.objects.pop(_key(obj), None)
            else:
                self.objects[_key(obj)] = obj
            self.on_change()
        return version

    def run(self, stop: threading.Event) -> None:
        version: str | None = None
        while not stop.is_set():
            try:
                version = self._relist() if version is None else version
                version = self._follow(version, stop)
            except Exception as exc:  # refusals, dropped connections, protocol errors: the thread goes on
                logger.warning("watching %s failed, retrying: %r", self.kind, exc)
                version = None
                stop.wait(RETRY_PAUSE_S)


def _key(obj: dict[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata", {})
    return meta.get("namespace", ""), meta.get("name", "")


class Discovery:
    """Watches LLMDeployments and their EndpointSlices in `namespaces` (empty:
    all) and calls `on_update` with each new table."""

    def __init__(self, kube: Kube, namespaces: list[str], on_update: Callable[[routes.RouteTable], None]) -> None:
        self.on_update = on_update
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.reflectors = {
            kind: [Reflector(kube, api_version, kind, ns, selector, self._rebuild) for ns in (namespaces or [None])]
            for api_version, kind, selector in WATCHED
        }
        self._threads: list[threading.Thread] = []

    @property
    def synced(self) -> bool:
        """Whether every reflector has listed once: before that, an unknown model may just be unseen yet."""
        return all(r.synced.is_set() for group in self.reflectors.values() for r in group)

    def _objects(self, kind: str) -> list[dict[str, Any]]:
        return [o for r in self.reflectors[kind] for o in list(r.objects.values())]

    def _rebuild(self) -> None:
        with self._lock:
            self.on_update(routes.build(self._objects(v1alpha1.KIND), self._objects("EndpointSlice")))

    def start(self) -> None:
        for group in self.reflectors.values():
            for reflector in group:
                thread = threading.Thread(target=reflector.run, args=(self._stop,), daemon=True,
                                          name=f"watch-{reflector.kind}-{reflector.namespace or 'all'}")
                thread.start()
                self._threads.append(thread)

    def stop(self) -> None:
        """Asks the watches to end; they notice at their next event or timeout (daemon threads)."""
        self._stop.set()
