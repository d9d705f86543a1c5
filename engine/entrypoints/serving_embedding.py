"""POST /v1/embeddings: each input's embedding, computed in the same batches as generation.

An embedding is the input's last token's final hidden state, of unit length:
how decoder embedding models (Qwen3-Embedding, gte-Qwen, e5-mistral) pool.
`dimensions` keeps the leading dimensions and renormalizes (Matryoshka-trained
models); `encoding_format: base64` sends little-endian float32, which is what
the official openai client asks for by default.
"""

from __future__ import annotations

import base64
import struct
import uuid

import torch
from fastapi import Request
from fastapi.responses import Response

from pagoda.engine.entrypoints.protocol import EmbeddingData, EmbeddingRequest, EmbeddingResponse, UsageInfo
from pagoda.engine.entrypoints.serving_engine import APIError
from pagoda.engine.entrypoints.serving_pooling import PoolingServing


def encode(vector: list[float], dimensions: int | None, encoding_format: str) -> list[float] | str:
    if dimensions is not None:
        vector = torch.nn.functional.normalize(torch.tensor(vector[:dimensions]), dim=0).tolist()
    if encoding_format == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
    return vector


class OpenAIServingEmbedding(PoolingServing):
    endpoint = "embeddings"
    id_prefix = "embd"

    async def create_embedding(self, request: EmbeddingRequest, raw_request: Request) -> Response:
        self.require("embed", request)
        hidden_size = self.engine.engine.model_config.hidden_size
        if request.dimensions is not None and request.dimensions > hidden_size:
            raise APIError(400, f"dimensions must be at most the model's {hidden_size}", param="dimensions")
        return await self.respond(self._embed(request, raw_request))

    async def _embed(self, request: EmbeddingRequest, raw_request: Request) -> EmbeddingResponse:
        lora = self.check_model(request.model)
        prompts = self.truncate(await self.prompts_of(request.input, "input"), request.truncate_prompt_tokens, 0)
        vectors = await self.pooled(f"{self.id_prefix}-{uuid.uuid4().hex}", prompts, lora, raw_request, "input")
        data = [EmbeddingData(index=i, embedding=encode(vector, request.dimensions, request.encoding_format))
                for i, vector in enumerate(vectors)]
        num_tokens = sum(len(p.token_ids) for p in prompts)
        return EmbeddingResponse(data=data, model=self.model_name(lora),
                                 usage=UsageInfo(prompt_tokens=num_tokens, total_tokens=num_tokens))
