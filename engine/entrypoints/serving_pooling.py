"""The pooling endpoints: prompts run to their last token, nothing generated, in the same batches as
generation. POST /v1/embeddings is in serving_embedding.py; here are vLLM's POST /classify (a sequence
classifier's label probabilities), /score and /v1/score (relevance of text pairs) and /rerank,
/v1/rerank and /v2/rerank (Jina's and Cohere's API: documents ordered by relevance to a query).

Scoring follows the model (engine/pooling.py): a one-label classifier is a cross-encoder that reads each
(query, document) pair as one prompt, the tokenizer's pair encoding; an embedding model embeds each text
alone and relevance is the cosine of the two embeddings.
"""

from __future__ import annotations

import json
import time
import uuid

from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel

from pagoda.engine.async_engine import EngineDeadError, EngineRequest, OutputStream
from pagoda.engine.entrypoints.protocol import (
    ClassifyData,
    ClassifyRequest,
    ClassifyResponse,
    RerankDocument,
    RerankRequest,
    RerankResponse,
    RerankResult,
    RerankUsage,
    ScoreData,
    ScoreRequest,
    ScoreResponse,
    UsageInfo,
)
from pagoda.engine.entrypoints.serving_engine import (
    CLIENT_CLOSED_REQUEST,
    APIError,
    OpenAIServing,
    Prompt,
    bad_request,
    logger,
    until_disconnect,
)
from pagoda.engine.lora import LoRARequest
from pagoda.engine.pooling import label_names, label_probs, pairs, relevances, score_texts
from pagoda.engine.sampling_params import SamplingParams


class Disconnected(Exception):
    """The client left before its pooled outputs were ready: answered with 499, which nobody reads."""


class PoolingServing(OpenAIServing):
    """Runs prompts to their pooled outputs (embeddings, or a classifier's logits)."""

    def require(self, task: str, request: BaseModel) -> None:
        """400 unless the model serves `task` (see LLMEngine.require_pooling)."""
        try:
            self.engine.engine.require_pooling(task)
        except ValueError as exc:
            raise bad_request(exc, request, "model") from None

    async def pooled(self, request_id: str, prompts: list[Prompt], lora: LoRARequest | None, raw_request: Request,
                     field: str) -> list[list[float]]:
        """Each prompt's pooled output, in order; Disconnected when the client leaves first."""
        arrival = time.monotonic()
        params = SamplingParams(max_tokens=1)
        engine_requests = []
        for i, prompt in enumerate(prompts):
            if len(prompt.token_ids) > self.max_model_len:
                raise self.too_long(len(prompt.token_ids), None, field)
            try:
                self.engine.engine.validate_prompt(prompt.token_ids, params, embed=True)
            except ValueError as exc:
                raise APIError(400, str(exc), param=field) from None
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
            logger.info(json.dumps({"event": "request", "request_id": request_id, "endpoint": self.endpoint,
                                    "status": status, "inputs": len(prompts),
                                    "prompt_tokens": sum(len(p.token_ids) for p in prompts),
                                    "latency_s": round(time.monotonic() - arrival, 6)}))
        if outputs is None:
            raise Disconnected
        return outputs

    @staticmethod
    async def _finals(stream: OutputStream, count: int) -> list[list[float]]:
        finals: dict[int, list[float]] = {}
        async for index, out in stream:
            if out.finished:
                finals[index] = out.embedding
        return [finals[i] for i in range(count)]

    async def respond(self, work) -> Response:  # type: ignore[no-untyped-def]
        """The JSON of `work`'s body, or 499 when its client left."""
        try:
            body: BaseModel = await work
        except Disconnected:
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        return Response(body.model_dump_json(), media_type="application/json")


class OpenAIServingPooling(PoolingServing):
    endpoint = "pooling"

    async def classify(self, request: ClassifyRequest, raw_request: Request) -> Response:
        self.require("classify", request)
        return await self.respond(self._classify(request, raw_request))

    async def _classify(self, request: ClassifyRequest, raw_request: Request) -> ClassifyResponse:
        lora = self.check_model(request.model)
        prompts = self.truncate(await self.prompts_of(request.input, "input"), request.truncate_prompt_tokens, 0)
        request_id = f"classify-{uuid.uuid4().hex}"
        names = label_names(self.engine.engine.model_config.hf_config)
        logits = await self.pooled(request_id, prompts, lora, raw_request, "input")
        data = []
        for i, row in enumerate(logits):
            probs = label_probs(row)
            data.append(ClassifyData(index=i, label=names[max(range(len(probs)), key=probs.__getitem__)],
                                     probs=probs, num_classes=len(probs)))
        return ClassifyResponse(id=request_id, model=self.model_name(lora), data=data, usage=_usage(prompts))

    async def score(self, request: ScoreRequest, raw_request: Request) -> Response:
        self.require("score", request)
        try:
            pairs_ = pairs(request.text_1, request.text_2)
        except ValueError as exc:
            raise bad_request(exc, request, "text_2") from None
        return await self.respond(self._score(request, pairs_, raw_request))

    async def _score(self, request: ScoreRequest, pairs_: list[tuple[str, str]], raw_request: Request) -> ScoreResponse:
        lora = self.check_model(request.model)
        request_id = f"score-{uuid.uuid4().hex}"
        scores, prompts = await self._relevance(request_id, pairs_, lora, raw_request, request.truncate_prompt_tokens)
        data = [ScoreData(index=i, score=score) for i, score in enumerate(scores)]
        return ScoreResponse(id=request_id, model=self.model_name(lora), data=data, usage=_usage(prompts))

    async def rerank(self, request: RerankRequest, raw_request: Request) -> Response:
        self.require("score", request)
        if not request.documents:
            raise APIError(400, "documents must not be empty", param="documents")
        return await self.respond(self._rerank(request, raw_request))

    async def _rerank(self, request: RerankRequest, raw_request: Request) -> RerankResponse:
        lora = self.check_model(request.model)
        request_id = f"rerank-{uuid.uuid4().hex}"
        scores, prompts = await self._relevance(request_id, [(request.query, d) for d in request.documents], lora,
                                                raw_request, request.truncate_prompt_tokens)
        order = sorted(range(len(scores)), key=lambda i: -scores[i])[: request.top_n or None]
        results = [RerankResult(index=i, relevance_score=scores[i],
                                document=RerankDocument(text=request.documents[i]) if request.return_documents else None)
                   for i in order]
        return RerankResponse(id=request_id, model=self.model_name(lora), results=results,
                              usage=RerankUsage(total_tokens=sum(len(p.token_ids) for p in prompts)))

    async def _relevance(self, request_id: str, pairs_: list[tuple[str, str]], lora: LoRARequest | None,
                         raw_request: Request, truncate: int | None) -> tuple[list[float], list[Prompt]]:
        """(each pair's relevance, the prompts run): a cross-encoder's sigmoid of the pair read as one prompt,
        or the cosine of an embedding model's embeddings of each text."""
        cross_encoder = self.engine.engine.pooling_task == "classify"
        texts = score_texts(pairs_, cross_encoder)
        if cross_encoder:
            try:
                encoded = [Prompt(await self.run_tokenizer(lambda a=a, b=b: self.tokenizer(a, text_pair=b)["input_ids"]))
                           for a, b in texts]
            except (ValueError, TypeError) as exc:
                raise APIError(400, f"the texts are not valid text: {exc}") from None
        else:
            encoded = await self.prompts_of(texts, "text_2")
        prompts = self.truncate(encoded, truncate, 0)
        pooled = await self.pooled(request_id, prompts, lora, raw_request, "text_2")
        return relevances(pairs_, texts, pooled, cross_encoder), prompts


def _usage(prompts: list[Prompt]) -> UsageInfo:
    tokens = sum(len(p.token_ids) for p in prompts)
    return UsageInfo(prompt_tokens=tokens, total_tokens=tokens)
