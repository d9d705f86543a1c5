"""The gateway's HTTP server (aiohttp): OpenAI requests in, proxied to an engine.

Bodies pass through byte for byte, streamed responses chunk by chunk as the
engine sends them. A client that disconnects cancels its handler, which
closes the upstream connection, so the engine aborts the request and frees
its KV blocks as it would for a direct client. An endpoint that cannot be
reached, or answers 503 (its queue is full), is skipped for the next one in
the balancer's order; one that could not be reached is also avoided for a
few seconds, until discovery hears that it is gone.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from pagoda import affinity as shared_affinity

from . import affinity
from .activity import ActivityReporter
from .balancer import Balancer
from .engine_load import EngineLoads
from .metrics import GatewayMetrics
from .routes import Route, RouteTable
from .settings import GatewaySettings

logger = logging.getLogger("pagoda.gateway")

#: Headers of one hop only (RFC 9110 7.6.1), never forwarded; Host and
#: Content-Length are the client library's to set.
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                         "transfer-encoding", "upgrade", "host", "content-length"})
#: The header naming the endpoint that served a response (as AIBrix's `target-pod`).
UPSTREAM_HEADER = "x-pagoda-upstream"
#: Request bodies up to this size: long prompts, base64 inputs.
MAX_BODY_BYTES = 64 << 20


def end_to_end(headers: Mapping[str, str]) -> list[tuple[str, str]]:
    """The headers another hop may carry on (repeated ones kept: several Set-Cookie, say)."""
    return [(name, value) for name, value in headers.items() if name.lower() not in _HOP_BY_HOP]


def error(status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
          code: str | None = None, headers: dict[str, str] | None = None) -> web.Response:
    """An error in OpenAI's format, as the engines answer theirs."""
    body = {"error": {"message": message, "type": type, "param": param, "code": code}}
    return web.json_response(body, status=status, headers=headers)


class Gateway:
    """The routing state and the request handlers."""

    def __init__(self, balancer: Balancer, metrics: GatewayMetrics, settings: GatewaySettings = GatewaySettings(),
                 *, synced: bool = False, activity: ActivityReporter | None = None) -> None:
        self.balancer = balancer
        self.metrics = metrics
        self.settings = settings
        #: Stamps LLMDeployments in use (None without Kubernetes: nothing scales to zero).
        self.activity = activity
        self._activity_task: asyncio.Task[None] | None = None
        self.engine_loads = EngineLoads(settings.engine_load_interval_s)
        self._loads_task: asyncio.Task[None] | None = None
        self.table = RouteTable()
        #: Whether discovery has listed everything once (a static table always has).
        self.synced = synced
        self.loads: Counter[str] = Counter()
        self._avoid_until: dict[str, float] = {}
        self._changed = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._session: aiohttp.ClientSession | None = None
        self.created = int(time.time())

    # -- the route table, replaced by discovery from its threads -------------

    def set_table(self, table: RouteTable, synced: bool = True) -> None:
        """Installs a new table; safe to call from any thread."""
        if self._loop is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._install, table, synced)
        else:
            self._install(table, synced)

    def _install(self, table: RouteTable, synced: bool) -> None:
        self.table, self.synced = table, synced
        self.metrics.set_endpoints({name: len(r.endpoints) for name, r in table.routes.items()})
        self._changed.set()
        self._changed = asyncio.Event()

    async def _route(self, model: str) -> Route | None:
        """The model's route once it has an endpoint, waiting up to `endpoint_wait_s`
        for one (or for discovery's first listing), `activation_wait_s` for a model
        scaled to zero, which it asks to scale up; None for an unknown model."""
        start = time.monotonic()
        activated = False
        while True:
            route = self.table.get(model)
            if route is not None and route.endpoints:
                return route
            if self.synced and route is None:
                return None
            zero_scaled = route is not None and bool(route.zero_scaled)
            if zero_scaled and self.activity is not None and not activated:
                activated = True
                await self.activity.activate(route)
            wait = self.settings.activation_wait_s if zero_scaled else self.settings.endpoint_wait_s
            remaining = start + wait - time.monotonic()
            if remaining <= 0:
                return route
            changed = self._changed
            try:
                await asyncio.wait_for(changed.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    # -- lifecycle --------------------------------------------------------------

    async def _start(self, app: web.Application) -> None:
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        timeout = aiohttp.ClientTimeout(total=None, connect=self.settings.connect_timeout_s)
        # No decompression: bodies go back to clients as the engine encoded them.
        self._session = aiohttp.ClientSession(timeout=timeout, auto_decompress=False,
                                              connector=aiohttp.TCPConnector(limit=0))
        if self.activity is not None:
            self._activity_task = asyncio.create_task(self.activity.run())
        if self.settings.engine_load_interval_s > 0:
            self._loads_task = asyncio.create_task(self.engine_loads.run(self._session, self._endpoints))

    def _endpoints(self) -> set[str]:
        return {e for route in self.table.routes.values() for e in route.endpoints}

    async def _stop(self, app: web.Application) -> None:
        for task in (self._activity_task, self._loads_task):
            if task is not None:
                task.cancel()
        if self._session is not None:
            await self._session.close()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.on_startup.append(self._start)
        app.on_cleanup.append(self._stop)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/health", self.health)
        app.router.add_get("/ready", self.ready)
        app.router.add_get("/metrics", self.prometheus)
        app.router.add_get("/v1/responses/{response_id}", self.stored_response)
        app.router.add_delete("/v1/responses/{response_id}", self.stored_response)
        app.router.add_post("/v1/{tail:.+}", self.proxy)
        # vLLM's unversioned endpoints: tokenizer, and pooling (classify, score, rerank; /v2/rerank is Cohere's).
        for path in ("/tokenize", "/detokenize", "/classify", "/score", "/rerank", "/v2/rerank"):
            app.router.add_post(path, self.proxy)
        return app

    # -- handlers ---------------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def ready(self, request: web.Request) -> web.Response:
        """Ready once discovery has listed the cluster: before that every model would look unknown."""
        return web.Response(text="ok") if self.synced else web.Response(status=503, text="not synced yet")

    async def prometheus(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def models(self, request: web.Request) -> web.Response:
        """Every model name the gateway routes, as the engines' /v1/models lists theirs."""
        data = [{"id": r.model, "object": "model", "created": self.created, "owned_by": "pagoda",
                 "root": r.parent or r.model, "parent": r.parent} for r in self.table.routes.values()]
        return web.json_response({"object": "list", "data": sorted(data, key=lambda m: m["id"])})

    async def stored_response(self, request: web.Request) -> web.Response:
        """GET or DELETE of a stored response: asked of the replica its id's point pins,
        for each model in turn (the id names no model), until one has it."""
        response_id = request.match_info["response_id"]
        missing = error(404, f"Response with id '{response_id}' not found.", type="NotFoundError",
                        param="response_id")
        at = shared_affinity.point_of_response(response_id)
        if at is None:
            return missing
        assert self._session is not None
        headers = end_to_end(request.headers)
        asked: set[str] = set()
        for route in list(self.table.routes.values()):
            if not route.endpoints:
                continue
            endpoint = self.balancer.order(route.endpoints, at, self.loads, pinned=True)[0]
            if endpoint in asked:
                continue
            asked.add(endpoint)
            try:
                async with self._session.request(request.method, endpoint + str(request.rel_url),
                                                 headers=headers) as upstream:
                    body = await upstream.read()
                    if upstream.status != 404:
                        return web.Response(status=upstream.status, body=body,
                                            content_type=upstream.content_type, headers={UPSTREAM_HEADER: endpoint})
            except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as exc:
                logger.warning("endpoint %s unreachable: %r", endpoint, exc)
        return missing

    async def proxy(self, request: web.Request) -> web.StreamResponse:
        start = time.monotonic()
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return error(413, f"the request body exceeds the gateway's limit of {MAX_BODY_BYTES >> 20} MiB")
        try:
            body = json.loads(raw)
        except ValueError:
            return error(400, "the request body is not valid JSON")
        model = body.get("model") if isinstance(body, dict) else None
        if not isinstance(model, str) or not model:
            return error(400, "model is required: the name of the model to use (see GET /v1/models)", param="model")
        self.metrics.in_flight.labels(model).inc()
        status = 500
        try:
            response = await self._forward(request, raw, body, model)
            gone = request.transport is None or request.transport.is_closing()
            status = 499 if gone else response.status
            return response
        except asyncio.CancelledError:
            status = 499  # the client went away mid-request (nginx's convention)
            raise
        finally:
            self.metrics.in_flight.labels(model).dec()
            self.metrics.requests.labels(model, str(status)).inc()
            self.metrics.duration.labels(model).observe(time.monotonic() - start)

    async def _forward(self, request: web.Request, raw: bytes, body: dict[str, Any],
                       model: str) -> web.StreamResponse:
        route = await self._route(model)
        if route is None:
            return error(404, f"The model `{model}` does not exist.", type="NotFoundError", param="model",
                         code="model_not_found")
        if not route.endpoints:
            return error(503, f"no replica of model `{model}` is ready; retry later", type="ServiceUnavailableError",
                         headers={"Retry-After": "5"})
        if self.activity is not None:
            self.activity.started(route)
        try:
            return await self._send(request, raw, body, model, route)
        finally:
            if self.activity is not None:
                self.activity.finished(route)

    async def _send(self, request: web.Request, raw: bytes, body: dict[str, Any], model: str,
                    route: Route) -> web.StreamResponse:
        """Sends the request to the balancer's pick among the route's endpoints, then its fall-backs."""
        now = time.monotonic()
        usable = [e for e in route.endpoints if self._avoid_until.get(e, 0) <= now] or list(route.endpoints)
        session = request.headers.get(self.settings.session_header) if self.settings.session_header else None
        at, pinned = affinity.affinity_point(model, request.path, body, self.settings.prefix_chars, session)
        loads = self.engine_loads.weigh(self.loads)
        attempts = self.balancer.order(usable, at, loads, pinned=pinned)[: self.settings.max_attempts]
        headers = end_to_end(request.headers)
        if at is not None:  # ours, not one a client sent
            headers = [(k, v) for k, v in headers if k.lower() != shared_affinity.HEADER]
            headers.append((shared_affinity.HEADER, shared_affinity.format_point(at)))
        for number, endpoint in enumerate(attempts, 1):
            if number > 1:
                self.metrics.retries.labels(model).inc()
            last = number == len(attempts)
            self.loads[endpoint] += 1
            try:
                response = await self._attempt(request, raw, headers, endpoint, last)
            finally:
                self.loads[endpoint] -= 1
            if response is not None:
                return response
        return error(502, f"no replica of model `{model}` could be reached", type="BadGatewayError")

    async def _attempt(self, request: web.Request, raw: bytes, headers: list[tuple[str, str]], endpoint: str,
                       last: bool) -> web.StreamResponse | None:
        """The response from `endpoint`, or None to try the next one."""
        assert self._session is not None
        try:
            upstream = await self._session.request(request.method, endpoint + str(request.rel_url), data=raw,
                                                   headers=headers)
        except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as exc:
            logger.warning("endpoint %s unreachable: %r", endpoint, exc)
            self._avoid_until[endpoint] = time.monotonic() + self.settings.cooldown_s
            return None
        try:
            if upstream.status == 503 and not last:
                return None  # queue full there: another replica may have room
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for name, value in end_to_end(upstream.headers):
                response.headers.add(name, value)
            if upstream.content_length is not None:
                response.content_length = upstream.content_length
            response.headers[UPSTREAM_HEADER] = endpoint
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response
        except ConnectionResetError:
            upstream.close()  # the client left mid-response: so does the engine's request
            return response
        except BaseException:
            upstream.close()  # not back to the pool: the engine must see the request end
            raise
        finally:
            upstream.release()
