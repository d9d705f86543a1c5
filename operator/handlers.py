"""kopf wiring: which events reconcile which `LLMDeployment`.

Every trigger ends in the same idempotent `reconcile.reconcile`:
create/update/resume of the resource, a periodic resync, and any change to a
child it owns (found by the owner label) that a reconcile depends on
(`child_events`), so a child deleted or edited by hand is restored within
moments while controllers' status churn costs nothing.  Reconciles of one resource never overlap;
child events arriving during one fold into a single rerun.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import kopf

from . import v1alpha1
from .child_events import ChildEventFilter
from .config import OperatorConfig
from .kube import Kube
from .manifests import servicemonitor
from .manifests.meta import MANAGED_BY, OWNER_LABEL
from .metrics import OperatorMetrics
from .reconcile import Outcome, reconcile

T = TypeVar("T")

#: Kinds of children whose changes trigger a reconcile of their owner.
CHILD_KINDS = (
    ("", "v1", "persistentvolumeclaims"),
    ("", "v1", "services"),
    ("", "v1", "pods"),
    ("apps", "v1", "deployments"),
    ("leaderworkerset.x-k8s.io", "v1", "leaderworkersets"),
    ("autoscaling", "v2", "horizontalpodautoscalers"),
    ("policy", "v1", "poddisruptionbudgets"),
)
#: Annotations prefix of kopf's own bookkeeping on the resource.
KOPF_PREFIX = "operator.pagoda.dev"


class Serializer:
    """At most one reconcile per resource at a time.

    Resource handlers wait their turn; child events do not queue up behind a
    running reconcile but mark it pending, and the running one goes again
    once, with fresh state, when it finishes.
    """

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._pending: set[str] = set()

    def run(self, key: str, fn: Callable[[], T], *, coalesce: bool = False) -> T | None:
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
            if coalesce and not lock.acquire(blocking=False):
                self._pending.add(key)
                return None
        if not coalesce:
            lock.acquire()
        try:
            while True:
                result = fn()
                with self._guard:
                    if key not in self._pending:
                        return result
                    self._pending.discard(key)
        finally:
            lock.release()


class Runtime:
    """What the handlers share: the API connection, configuration, metrics, serializer, child event filter."""

    def __init__(self, kube: Kube, config: OperatorConfig, metrics: OperatorMetrics) -> None:
        self.kube = kube
        self.config = config
        self.metrics = metrics
        self.serializer = Serializer()
        self.child_events = ChildEventFilter()
        self.service_monitor = kube.serves(servicemonitor.API_VERSION, servicemonitor.KIND)

    def converge(self, namespace: str, name: str, *, coalesce: bool) -> Outcome | None:
        """Reconciles the resource as it is now (None when gone or folded into a running reconcile)."""
        key = f"{namespace}/{name}"

        def once() -> Outcome | None:
            body = self.kube.get(v1alpha1.API_VERSION, v1alpha1.KIND, namespace, name)
            if body is None or body["metadata"].get("deletionTimestamp"):
                self.metrics.forget(key)
                return None  # garbage collection takes the children
            outcome = self.metrics.reconciled(key, lambda: reconcile(self.kube, body, self.config,
                                                                     service_monitor=self.service_monitor))
            _post_events(body, outcome)
            return outcome

        return self.serializer.run(key, once, coalesce=coalesce)


def _post_events(body: dict[str, Any], outcome: Outcome) -> None:
    ref = {"apiVersion": body["apiVersion"], "kind": body["kind"],
           "metadata": {k: body["metadata"][k] for k in ("name", "namespace", "uid")}}
    for reason, message in outcome.actions:
        kopf.event(ref, type="Normal", reason=reason, message=message)
    degraded = next(c for c in outcome.status["conditions"] if c["type"] == "Degraded")
    was = next((c for c in (body.get("status") or {}).get("conditions", []) if c["type"] == "Degraded"), None)
    if degraded["status"] == "True" and (was is None or was["status"] != "True" or was["reason"] != degraded["reason"]):
        kopf.event(ref, type="Warning", reason=degraded["reason"], message=degraded["message"])


def register(registry: kopf.OperatorRegistry, config: OperatorConfig, metrics: OperatorMetrics) -> None:
    """Registers the operator's handlers into `registry`; their reconciles are counted in `metrics`."""
    resource = (v1alpha1.GROUP, v1alpha1.VERSION, v1alpha1.PLURAL)

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        """kopf's own watches use the same credentials as `Kube.connect`."""
        return kopf.login_via_client(**kwargs)

    @kopf.on.startup(registry=registry)
    def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
        # kopf's bookkeeping lives in annotations of our own prefix, so
        # `.status` holds only what the CRD schema declares.
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=KOPF_PREFIX)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=KOPF_PREFIX)
        settings.posting.reporting_component = MANAGED_BY
        settings.watching.server_timeout = 300
        memo.runtime = Runtime(Kube.connect(), config, metrics)
        logger.info("ServiceMonitor support: %s", memo.runtime.service_monitor)

    @kopf.on.create(*resource, registry=registry)
    @kopf.on.update(*resource, registry=registry)
    @kopf.on.resume(*resource, registry=registry)
    def on_resource(namespace: str, name: str, retry: int, memo: kopf.Memo, **_: Any) -> None:
        outcome = memo.runtime.converge(namespace, name, coalesce=False)
        if outcome is not None and outcome.problems:
            # Missing Secrets or claims may appear any time: retry with backoff.
            raise kopf.TemporaryError(outcome.problems[0].message, delay=config.backoff(retry))

    @kopf.timer(*resource, interval=config.resync_seconds, idle=config.resync_seconds, registry=registry)
    def resync(namespace: str, name: str, memo: kopf.Memo, **_: Any) -> None:
        memo.runtime.converge(namespace, name, coalesce=True)

    def on_child(event: dict[str, Any], labels: dict[str, str], namespace: str, memo: kopf.Memo, **_: Any) -> None:
        if event.get("type") is None:
            return  # the initial listing: `resume` covers start-up
        if memo.runtime.child_events.matters(event["type"], event["object"]):
            memo.runtime.converge(namespace, labels[OWNER_LABEL], coalesce=True)

    for group, version, plural in CHILD_KINDS:
        kopf.on.event(group=group, version=version, plural=plural, registry=registry, id=f"child-{plural}",
                      labels={"app.kubernetes.io/managed-by": MANAGED_BY, OWNER_LABEL: kopf.PRESENT})(on_child)
