"""POST /v1/embeddings: each input's embedding, computed in the same batches as generation.

An embedding is the input's last token's final hidden state, of unit length:
how decoder embedding models (Qwen3-Embedding, gte-Qwen, e5-mistral) pool.
`dimensions` keeps the leading dimensions and renormalizes (Matryoshka-trained
models); `encoding_format: base64` sends little-endian float32, which is what
the official openai client asks for by default.
"""

from __future__ import annotations

import base64
import json
import struct
import time
import uuid

import torch
from fastapi import Request
from fastapi.responses import Response

from pagoda.engine.async_engine import EngineDeadError, EngineRequest, OutputStream
from pagoda.engine.entrypoints.protocol import EmbeddingData, EmbeddingRequest, EmbeddingResponse, UsageInfo
from pagoda.engine.entrypoints.serving_engine import (
    CLIENT_CLOSED_REQUEST,
    APIError,
    OpenAIServing,
    bad_request,
    logger,
    until_disconnect,
)
from pagoda.engine.outputs import RequestOutput
from pagoda.engine.sampling_params import SamplingParams


def encode(vector: list[float], dimensions: int | None, encoding_format: str) -> list[float] | str:
    if dimensions is not None:
        vector = torch.nn.functional.normalize(torch.tensor(vector[:dimensions]), dim=0).tolist()
    if encoding_format == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
    return vector


class OpenAIServingEmbedding(OpenAIServing):
    endpoint = "embeddings"
    id_prefix = "embd"

    async def create_embedding(self, request: EmbeddingRequest, raw_request: Request) -> Response:
        arrival = time.monotonic()
        lora = self.check_model(request.model)
        hidden_size = self.engine.engine.model_config.hidden_size
        if request.dimensions is not None and request.dimensions > hidden_size:
            raise APIError(400, f"dimensions must be at most the model's {hidden_size}", param="dimensions")
        prompts = self.truncate(await self.prompts_of(request.input, "input"), request.truncate_prompt_tokens, 0)
        request_id = f"{self.id_prefix}-{uuid.uuid4().hex}"
        params = SamplingParams(max_tokens=1)
        engine_requests = []
        for i, prompt in enumerate(prompts):
            if len(prompt.token_ids) > self.max_model_len:
                raise self.too_long(len(prompt.token_ids), None, "input")
            try:
                self.engine.engine.validate_prompt(prompt.token_ids, params, embed=True)
            except ValueError as exc:
                raise bad_request(exc, request, "input") from None
            engine_requests.append(EngineRequest(f"{request_id}-{i}", prompt.token_ids, params, prompt.text, arrival,
                                                 lora, embed=True))
        stream = self._submit(engine_requests)
        status = "aborted"
        try:
            outputs = await until_disconnect(raw_request, self._finals(stream, len(prompts)))
            status = "finished" if outputs is not None else status
        except EngineDeadError as exc:
            status = "error"
            raise APIError(503, str(exc), type="server_error", code="engine_unavailable") from None
        finally:
            stream.close()
            num_tokens = sum(len(p.token_ids) for p in prompts)
            logger.info(json.dumps({"event": "request", "request_id": request_id, "endpoint": self.endpoint,
                                    "status": status, "inputs": len(prompts), "prompt_tokens": num_tokens,
                                    "latency_s": round(time.monotonic() - arrival, 6)}))
        if outputs is None:
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        data = [EmbeddingData(index=i, embedding=encode(out.embedding, request.dimensions, request.encoding_format))
                for i, out in enumerate(outputs)]
        body = EmbeddingResponse(data=data, model=self.model_name(lora),
                                 usage=UsageInfo(prompt_tokens=num_tokens, total_tokens=num_tokens))
        return Response(body.model_dump_json(), media_type="application/json")

    @staticmethod
    async def _finals(stream: OutputStream, count: int) -> list[RequestOutput]:
        finals: dict[int, RequestOutput] = {}
        async for index, out in stream:
            if out.finished:
                finals[index] = out
        return [finals[i] for i in range(count)]
