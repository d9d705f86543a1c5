"""Scale to zero and back: idle LLMDeployments give their GPUs back.

An HPA never goes below one replica (its scale-to-zero is an alpha feature
gate), and it stands aside while its target has none. So with
`autoscaling.minReplicas: 0` the operator makes the two crossings itself,
through the Deployment's `.spec.replicas`, and the HPA scales between one and
`maxReplicas` as usual. What says whether a model is in use is `pagoda
gateway`: it stamps `LAST_REQUEST_ANNOTATION` on the LLMDeployment when a
request arrives for a model without replicas (at once, so the scale-up starts
while the request waits) and every few seconds while requests come or are in
flight. A model with no stamp newer than `scaleToZeroDelaySeconds` goes to
zero; a newer stamp brings one replica back.
"""

from __future__ import annotations

from datetime import datetime, timezone

from .v1alpha1 import LLMDeployment

#: RFC 3339 time of the last request the gateway routed to the resource's model.
LAST_REQUEST_ANNOTATION = "pagoda.dev/last-request-time"
#: The field manager of the operator's own replica changes (merge patches, not applies:
#: the HPA's later changes to the same field must not conflict with them).
SCALE_MANAGER = "pagoda-operator-scale-to-zero"


def format_time(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str | None) -> datetime | None:
    """The annotation's time, or None when absent or unreadable (treated as never)."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def enabled(resource: LLMDeployment) -> bool:
    auto = resource.spec.autoscaling
    return auto.enabled and auto.min_replicas == 0


def target_replicas(resource: LLMDeployment, replicas: int, last_request: datetime | None,
                    now: datetime) -> int | None:
    """The replica count to set now, or None to leave `.spec.replicas` to the HPA.

    `replicas` is the Deployment's current `.spec.replicas`. A model never
    requested starts at zero.
    """
    if not enabled(resource):
        return None
    delay = resource.spec.autoscaling.scale_to_zero_delay_seconds
    idle = last_request is None or (now - last_request).total_seconds() > delay
    if replicas > 0 and idle:
        return 0
    if replicas == 0 and not idle:
        return 1
    return None
