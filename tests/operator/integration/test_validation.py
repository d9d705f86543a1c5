"""Every CEL rule of the CRD refuses its bad input, with its message, at apply time."""

from __future__ import annotations

from typing import Any

import pytest

from e2e.cluster.client import Cluster, KubectlError

from ..cel_cases import AUTO, CASES, manifest


@pytest.mark.parametrize(("bad", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_refused_with_its_message(cluster: Cluster, namespace: str, bad: dict[str, Any],
                                               message: str) -> None:
    with pytest.raises(KubectlError) as refused:
        cluster.apply(bad, namespace=namespace)
    assert message in refused.value.stderr


def test_good_input_with_every_field_is_accepted(cluster: Cluster, namespace: str) -> None:
    cluster.apply(manifest("full", engine={"tensorParallelSize": 2, "maxModelLen": 2048, "maxNumBatchedTokens": 4096,
                                       "gpuMemoryUtilization": 1, "extraArgs": ["--seed=1"]},
                       autoscaling=AUTO | {"targetQueueDepth": 0.5}, resources={"gpus": 2, "requests": {"cpu": 2}},
                       modelCache={"size": "10Gi"}), namespace=namespace)
