"""The OpenAI-compatible HTTP server: FastAPI routes on uvicorn, around one AsyncLLMEngine.

Every failure is answered in OpenAI's error format, including the ones
FastAPI and Starlette produce themselves (unparsable JSON, wrong types,
unknown routes). Probes: /health is liveness (the engine thread is alive),
/ready is readiness (model loaded, queue below its limit, not draining).
SIGTERM drains: uvicorn stops accepting connections and waits for in-flight
requests up to --drain-timeout, then the engine stops and the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import signal
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

import pagoda
from pagoda.engine.async_engine import AsyncLLMEngine
from pagoda.engine.entrypoints.args import ServeSettings
from pagoda.engine.entrypoints.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    DetokenizeRequest,
    DetokenizeResponse,
    ClassifyRequest,
    ClassifyResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    RerankRequest,
    RerankResponse,
    ScoreRequest,
    ScoreResponse,
    ErrorResponse,
    LoadLoRAAdapterRequest,
    ModelCard,
    ModelList,
    TokenizeRequest,
    TokenizeResponse,
    UnloadLoRAAdapterRequest,
    VersionResponse,
)
from pagoda.engine.entrypoints.protocol_responses import ResponseObject, ResponsesRequest
from pagoda.engine.entrypoints.response_store import ResponseStore
from pagoda.engine.entrypoints.serving_chat import OpenAIServingChat
from pagoda.engine.entrypoints.serving_completion import OpenAIServingCompletion
from pagoda.engine.entrypoints.serving_embedding import OpenAIServingEmbedding
from pagoda.engine.entrypoints.serving_pooling import OpenAIServingPooling
from pagoda.engine.entrypoints.serving_engine import APIError, bad_request
from pagoda.engine.entrypoints.serving_responses import OpenAIServingResponses
from pagoda.engine.entrypoints.tool_parsers import detect_tool_parser
from pagoda.engine.llm_engine import LLMEngine
from pagoda.engine.lora import LoRARequest
from pagoda.engine.metrics import EngineMetrics
from pagoda.engine.model_config import load_model_config
from pagoda.engine.tensor_parallel import run_headless_node
from pagoda.engine.tokenizer import load_tokenizer

logger = logging.getLogger("pagoda.server")

# Open without an API key: probes, Prometheus, and the schema.
PUBLIC_PATHS = frozenset({"/health", "/ready", "/metrics", "/version", "/openapi.json", "/docs", "/redoc"})

_ERRORS = {status: {"model": ErrorResponse} for status in (400, 401, 404, 503)}


@dataclass
class ServerState:
    settings: ServeSettings
    engine: AsyncLLMEngine
    metrics: EngineMetrics
    completion: OpenAIServingCompletion
    chat: OpenAIServingChat
    embedding: OpenAIServingEmbedding
    responses: OpenAIServingResponses
    pooling: OpenAIServingPooling
    draining: bool = False


class APIKeyMiddleware:
    """Refuses non-public paths without `Authorization: Bearer <key>`, before any body is read."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in PUBLIC_PATHS:
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                error = APIError(401, "Incorrect or missing API key: send 'Authorization: Bearer <key>'.",
                                 code="invalid_api_key")
                await error.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _validation_error(exc: RequestValidationError) -> APIError:
    first = exc.errors()[0] if exc.errors() else {}
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    if first.get("type") == "json_invalid":
        return APIError(400, f"the body is not valid JSON: {first.get('ctx', {}).get('error', 'parse error')}")
    field = ".".join(loc)
    message = f"{field}: {first.get('msg', 'invalid value')}" if field else first.get("msg", "invalid request")
    return APIError(400, message, param=loc[0] if loc else None)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(_: Request, exc: APIError) -> Response:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> Response:
        return _validation_error(exc).response()

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> Response:
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return APIError(exc.status_code, str(exc.detail), type=kind, headers=exc.headers).response()

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> Response:
        logger.exception("unhandled error")
        return APIError(500, "internal server error", type="server_error").response()


def _add_routes(app: FastAPI) -> None:
    def state(request: Request) -> ServerState:
        return request.app.state.server

    @app.get("/health", responses={503: {"model": ErrorResponse}})
    async def health(request: Request) -> Response:
        if not state(request).engine.is_alive:
            raise APIError(503, "the engine loop is not running", type="server_error")
        return Response(status_code=200)

    @app.get("/ready", responses={503: {"model": ErrorResponse}})
    async def ready(request: Request) -> Response:
        s = state(request)
        if s.draining or not s.engine.is_alive:
            raise APIError(503, "the server is shutting down" if s.draining else "the engine is not running",
                           type="server_error")
        if not s.engine.has_room:
            raise APIError(503, "the request queue is full", type="server_error", code="queue_full")
        return Response(status_code=200)

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        return Response(generate_latest(state(request).metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/version")
    async def version() -> VersionResponse:
        return VersionResponse(version=pagoda.__version__)

    @app.get("/v1/models", responses=_ERRORS)
    async def models(request: Request) -> ModelList:
        s = state(request)
        base = s.settings.served_model_name
        cards = [ModelCard(id=base, root=s.settings.engine.model, max_model_len=s.completion.max_model_len)]
        cards += [ModelCard(id=name, root=adapter.path, parent=base, max_model_len=s.completion.max_model_len)
                  for name, adapter in sorted(s.engine.engine.loras.items())]
        return ModelList(data=cards)

    @app.post("/v1/load_lora_adapter", responses=_ERRORS)
    async def load_lora_adapter(body: LoadLoRAAdapterRequest, request: Request) -> Response:
        """Serves another adapter (vLLM's endpoint, which KubeAI and AIBrix drive)."""
        s = state(request)
        if body.lora_name == s.settings.served_model_name:
            raise APIError(400, "a LoRA adapter cannot have the served model's name", param="lora_name")
        engine = s.engine.engine
        lora = LoRARequest(body.lora_name, body.lora_path)
        try:
            adapter = await asyncio.to_thread(engine.read_lora, lora)  # disk reads stay off both loops
            await s.engine.call(lambda e: e.install_lora(adapter))
        except ValueError as exc:
            raise bad_request(exc, body, "lora_path") from None
        return Response(f"Success: LoRA adapter '{body.lora_name}' added successfully.", media_type="text/plain")

    @app.post("/v1/unload_lora_adapter", responses=_ERRORS)
    async def unload_lora_adapter(body: UnloadLoRAAdapterRequest, request: Request) -> Response:
        s = state(request)
        try:
            await s.engine.call(lambda e: e.remove_lora(body.lora_name))
        except ValueError as exc:
            raise bad_request(exc, body, "lora_name") from None
        return Response(f"Success: LoRA adapter '{body.lora_name}' removed successfully.", media_type="text/plain")

    @app.post("/v1/completions", response_model=CompletionResponse, responses=_ERRORS)
    async def completions(body: CompletionRequest, request: Request) -> Response:
        return await state(request).completion.create_completion(body, request)

    @app.post("/v1/chat/completions", response_model=ChatCompletionResponse, responses=_ERRORS)
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        return await state(request).chat.create_chat_completion(body, request)

    @app.post("/v1/responses", response_model=ResponseObject, responses=_ERRORS)
    async def responses(body: ResponsesRequest, request: Request) -> Response:
        return await state(request).responses.create_response(body, request)

    @app.get("/v1/responses/{response_id}", response_model=ResponseObject, responses=_ERRORS)
    async def get_response(response_id: str, request: Request) -> Response:
        """A stored response, as it was returned."""
        return JSONResponse(state(request).responses.stored(response_id).response)

    @app.delete("/v1/responses/{response_id}", responses=_ERRORS)
    async def delete_response(response_id: str, request: Request) -> Response:
        serving = state(request).responses
        serving.stored(response_id)
        serving.store.delete(response_id)
        return JSONResponse({"id": response_id, "object": "response", "deleted": True})

    @app.post("/v1/embeddings", response_model=EmbeddingResponse, responses=_ERRORS)
    async def embeddings(body: EmbeddingRequest, request: Request) -> Response:
        return await state(request).embedding.create_embedding(body, request)

    @app.post("/classify", response_model=ClassifyResponse, responses=_ERRORS)
    async def classify(body: ClassifyRequest, request: Request) -> Response:
        return await state(request).pooling.classify(body, request)

    @app.post("/score", response_model=ScoreResponse, responses=_ERRORS)
    @app.post("/v1/score", response_model=ScoreResponse, responses=_ERRORS)
    async def score(body: ScoreRequest, request: Request) -> Response:
        return await state(request).pooling.score(body, request)

    @app.post("/rerank", response_model=RerankResponse, responses=_ERRORS)
    @app.post("/v1/rerank", response_model=RerankResponse, responses=_ERRORS)
    @app.post("/v2/rerank", response_model=RerankResponse, responses=_ERRORS)
    async def rerank(body: RerankRequest, request: Request) -> Response:
        return await state(request).pooling.rerank(body, request)

    @app.post("/tokenize", responses=_ERRORS)
    async def tokenize(body: TokenizeRequest, request: Request) -> TokenizeResponse:
        serving = state(request).completion
        serving.check_model(body.model)
        if (body.prompt is None) == (body.messages is None):
            raise APIError(400, "give exactly one of prompt and messages", param="prompt")
        try:
            if body.messages is not None:
                ids = await serving.render_chat([m.to_template() for m in body.messages], body.add_generation_prompt,
                                                body.template_kwargs())
            else:
                ids = await serving.encode(body.prompt, body.add_special_tokens)
        except ValueError as exc:
            raise bad_request(exc, body, "messages" if body.messages is not None else "prompt") from None
        return TokenizeResponse(tokens=ids, count=len(ids), max_model_len=serving.max_model_len)

    @app.post("/detokenize", responses=_ERRORS)
    async def detokenize(body: DetokenizeRequest, request: Request) -> DetokenizeResponse:
        serving = state(request).completion
        serving.check_model(body.model)
        vocab = serving.engine.engine.model_config.vocab_size
        bad = [t for t in body.tokens if not 0 <= t < vocab]
        if bad:
            raise APIError(400, f"token id {bad[0]} is outside the vocabulary [0, {vocab})", param="tokens")
        text = await serving.run_tokenizer(serving.tokenizer.decode, body.tokens)
        return DetokenizeResponse(prompt=text)


def _tool_parser(setting: str, tokenizer: Any) -> str | None:
    """The --tool-call-parser in effect: "auto" reads the chat template, "none" turns auto tool choice off."""
    if setting == "auto":
        return detect_tool_parser(getattr(tokenizer, "chat_template", None))
    return None if setting == "none" else setting


def build_app(settings: ServeSettings, engine: LLMEngine | None = None) -> FastAPI:
    """The ASGI app; it loads the model at startup unless given an engine (tests share one)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        llm_engine = engine or LLMEngine(settings.engine)
        for name, path in settings.lora_modules:
            llm_engine.add_lora(LoRARequest(name, path))
        metrics = EngineMetrics(settings.served_model_name)
        async_engine = AsyncLLMEngine(llm_engine, max_queue_len=settings.max_queue_len, metrics=metrics)
        tokenizer = load_tokenizer(settings.engine.tokenizer or settings.engine.model)
        if settings.chat_template is not None:
            tokenizer.chat_template = settings.chat_template
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pagoda-tokenizer")
        args = (async_engine, tokenizer, settings.served_model_name, pool)
        tool_parser = _tool_parser(settings.tool_call_parser, tokenizer)
        reasoning = None if settings.reasoning_parser == "none" else settings.reasoning_parser
        chat_options = {"tool_parser": tool_parser, "reasoning_parser": reasoning}
        chat = OpenAIServingChat(*args, **chat_options)
        responses = OpenAIServingResponses(*args, **chat_options, store=ResponseStore(settings.responses_store_size))
        for serving in (chat, responses):
            serving.allowed_media_domains = settings.allowed_media_domains
        app.state.server = ServerState(settings, async_engine, metrics, OpenAIServingCompletion(*args), chat,
                                       OpenAIServingEmbedding(*args), responses, OpenAIServingPooling(*args))
        async_engine.start()
        logger.info("serving %s as %r (max_model_len %d, tool-call parser %s)", settings.engine.model,
                    settings.served_model_name, llm_engine.max_model_len, tool_parser)
        try:
            yield
        finally:
            await async_engine.shutdown()
            pool.shutdown(wait=False)

    app = FastAPI(title="pagoda", version=pagoda.__version__, lifespan=lifespan)
    _install_error_handlers(app)
    _add_routes(app)
    if settings.api_key:
        app.add_middleware(APIKeyMiddleware, api_key=settings.api_key)
    return app


class _DrainingServer(uvicorn.Server):
    """Marks the app as draining (readiness fails) the moment a shutdown signal arrives."""

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self._app = app

    def handle_exit(self, sig: int, frame: object) -> None:
        server = getattr(self._app.state, "server", None)
        if server is not None:
            server.draining = True
        super().handle_exit(sig, frame)


def run_server(settings: ServeSettings) -> int:
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.headless:
        engine = settings.engine
        logger.info("node %d of %d: ranks %d..%d of %s, meeting at %s:%d", engine.node_rank, engine.nnodes,
                    engine.node_rank * engine.ranks_per_node, (engine.node_rank + 1) * engine.ranks_per_node - 1,
                    engine.model, engine.master_addr, engine.master_port)
        return run_headless_node(engine, load_model_config(engine.model, engine.dtype, engine.max_model_len))
    app = build_app(settings)
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_level=settings.log_level, access_log=False,
        timeout_graceful_shutdown=settings.drain_timeout,
    )
    # uvicorn re-raises the signal it shut down for once it is done; with SIGTERM
    # ignored by then, a drained shutdown ends the process with status 0.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    server = _DrainingServer(config, app)
    server.run()
    return 0 if server.started else 1  # not started: the model failed to load
