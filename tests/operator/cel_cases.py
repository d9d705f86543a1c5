"""Bad LLMDeployments, each with the message its CEL rule answers with.

Shared by the integration test that applies them to a real API server and by
the unit test that checks every rule of the CRD has a case here.
"""

from __future__ import annotations

import copy
from typing import Any

from .integration.stack import llm_deployment


def manifest(name: str = "bad", **spec: Any) -> dict[str, Any]:
    return llm_deployment(name, **copy.deepcopy(spec))


AUTO = {"enabled": True, "minReplicas": 1, "maxReplicas": 2}
#: A model cache every machine of a multi-node replica can mount.
RWX = {"size": "1Gi", "accessModes": ["ReadWriteMany"]}

#: (case, manifest, the message the API server answers with)
CASES: list[tuple[str, dict[str, Any], str]] = [
    ("malformed-source", manifest(model={"source": "s3://bucket/model"}),
     "model.source must be hf://ORG/NAME[@REVISION] or pvc://CLAIM[/PATH]"),
    ("tp-not-power-of-two", manifest(engine={"tensorParallelSize": 3}),
     "engine.tensorParallelSize must be a power of two between 1 and 64"),
    ("gpu-utilization-zero", manifest(engine={"gpuMemoryUtilization": 0}),
     "engine.gpuMemoryUtilization must be greater than 0 and at most 1"),
    ("gpu-utilization-above-one", manifest(engine={"gpuMemoryUtilization": 1.5}),
     "engine.gpuMemoryUtilization must be greater than 0 and at most 1"),
    ("batched-below-model-len", manifest(engine={"maxModelLen": 4096, "maxNumBatchedTokens": 1024}),
     "engine.maxNumBatchedTokens must be at least engine.maxModelLen, or a full-length prompt never fits a batch"),
    ("managed-flag-in-extra-args", manifest(engine={"extraArgs": ["--port=9000"]}),
     "engine.extraArgs must not set --host, --port, --served-model-name, --api-key, --tensor-parallel-size, "
     "--drain-timeout, --lora-modules, --nnodes, --node-rank, --master-addr, --master-port, --headless: "
     "the operator sets them from the resource"),
    ("speculative-lookup-range", manifest(engine={"speculativeConfig": {"numSpeculativeTokens": 3,
                                                                        "promptLookupMin": 5, "promptLookupMax": 2}}),
     "engine.speculativeConfig.promptLookupMin must be at most promptLookupMax"),
    ("draft-model-without-model", manifest(engine={"speculativeConfig": {"method": "draft_model",
                                                                         "numSpeculativeTokens": 3}}),
     "engine.speculativeConfig.model is required with method draft_model, and only with it"),
    ("ngram-with-a-model", manifest(engine={"speculativeConfig": {"numSpeculativeTokens": 3, "model": "hf://org/d"}}),
     "engine.speculativeConfig.model is required with method draft_model, and only with it"),
    ("draft-model-source", manifest(engine={"speculativeConfig": {"method": "draft_model", "numSpeculativeTokens": 3,
                                                                  "model": "s3://bucket/draft"}}),
     "engine.speculativeConfig.model must be hf://ORG/NAME[@REVISION] or pvc://CLAIM[/PATH]"),
    ("draft-model-tensor-parallel", manifest(engine={"tensorParallelSize": 2, "speculativeConfig": {
        "method": "draft_model", "numSpeculativeTokens": 3, "model": "hf://org/d"}}),
     "engine.speculativeConfig with a draft model needs engine.tensorParallelSize 1"),
    ("adapter-name", manifest(adapters=[{"name": "org/sql", "source": "hf://org/sql-lora"}]),
     "adapters[].name must start with a letter or digit and hold only letters, digits, '-', '_' and '.'"),
    ("adapter-source", manifest(adapters=[{"name": "sql", "source": "s3://bucket/sql-lora"}]),
     "adapters[].source must be hf://ORG/NAME[@REVISION] or pvc://CLAIM[/PATH]"),
    ("adapter-names-unique", manifest(adapters=[{"name": "sql", "source": "hf://org/a"},
                                                {"name": "sql", "source": "hf://org/b"}]),
     "adapters[].name must be unique"),
    ("adapter-named-like-the-model", manifest(model={"source": "hf://org/m", "servedName": "m"},
                                              adapters=[{"name": "m", "source": "hf://org/a"}]),
     "adapters[].name must differ from model.servedName"),

    ("autoscaling-without-bounds", manifest(autoscaling={"enabled": True}),
     "autoscaling.enabled requires both autoscaling.minReplicas and autoscaling.maxReplicas"),
    ("min-above-max", manifest(autoscaling={"enabled": True, "minReplicas": 4, "maxReplicas": 2}),
     "autoscaling.minReplicas must not exceed autoscaling.maxReplicas"),
    ("zero-queue-target", manifest(autoscaling=AUTO | {"targetQueueDepth": 0}),
     "autoscaling.targetQueueDepth must be greater than 0"),
    ("negative-cache-size", manifest(modelCache={"size": "-10Gi"}),
     "must be a positive quantity, such as 4, 500m or 50Gi"),
    ("gpus-not-tp", manifest(engine={"tensorParallelSize": 2}, resources={"gpus": 1}),
     "resources.gpus must be 0 (CPU only) or equal engine.tensorParallelSize / engine.nnodes"),
    ("gpus-not-tp-per-node", manifest(engine={"tensorParallelSize": 4, "nnodes": 2}, resources={"gpus": 4},
                                      modelCache=RWX),
     "resources.gpus must be 0 (CPU only) or equal engine.tensorParallelSize / engine.nnodes"),
    ("nnodes-not-dividing-tp", manifest(engine={"tensorParallelSize": 2, "nnodes": 4}, modelCache=RWX),
     "engine.nnodes must divide engine.tensorParallelSize: every machine holds the same number of ranks"),
    ("nnodes-above-16", manifest(engine={"tensorParallelSize": 64, "nnodes": 32}, modelCache=RWX),
     "spec.engine.nnodes: Invalid value: 32: spec.engine.nnodes in body should be less than or equal to 16"),
    ("nnodes-with-a-single-node-cache", manifest(engine={"tensorParallelSize": 2, "nnodes": 2}),
     "engine.nnodes above 1 needs a model every machine can mount: modelCache.accessModes with ReadWriteMany, "
     "modelCache.enabled false, or a pvc:// model.source"),
    ("nnodes-scaled-to-zero", manifest(engine={"tensorParallelSize": 2, "nnodes": 2}, modelCache=RWX,
                                       autoscaling=AUTO | {"minReplicas": 0}),
     "autoscaling.minReplicas 0 (scale to zero) needs engine.nnodes 1"),
    ("name-not-dns-label", manifest("7b-model"), "metadata.name must be at most 50 characters of a-z, 0-9 and '-', "
     "starting with a letter: it names the Service and the other children"),
]


