"""`pagoda run-batch -i requests.jsonl -o results.jsonl MODEL_DIR`: OpenAI's batch file format, run offline
(vLLM's `run-batch`), for a Kubernetes Job rather than a server.

Each input line is `{"custom_id", "method": "POST", "url", "body"}`; each output line, in input order,
`{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error"}` as OpenAI's Batch API
writes them. The requests go to the server's own app in this process (no socket): the same
validation, chat templates, tool and reasoning parsers, and the same engine batching them all at
once; a request the server refuses keeps its 4xx answer in `response`, a line that is not a request
at all gets `error` instead. Streaming has no place in a file and is refused.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from pagoda.engine.entrypoints.args import ServeSettings

logger = logging.getLogger(__name__)

# The endpoints a batch line may name.
BATCH_URLS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses", "/v1/score",
              "/v1/rerank")


async def _post(app: FastAPI, path: str, body: bytes, headers: list[tuple[bytes, bytes]]) -> tuple[int, bytes]:
    """(status, body) of one POST handled by the ASGI app in this process."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"content-type", b"application/json"), *headers], "client": ("batch", 0),
             "server": ("batch", 0)}
    request = [{"type": "http.request", "body": body, "more_body": False}]
    status, chunks, answered = 500, [], asyncio.Event()

    async def receive() -> dict[str, Any]:
        if request:
            return request.pop()
        await answered.wait()  # the client stays connected until it has its answer
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                answered.set()

    try:
        await app(scope, receive, send)
    finally:
        answered.set()
    return status, b"".join(chunks)


def _line_error(custom_id: Any, message: str) -> dict[str, Any]:
    return {"id": f"batch_req_{uuid.uuid4().hex}", "custom_id": custom_id, "response": None,
            "error": {"code": "invalid_request", "message": message}}


async def _run_line(app: FastAPI, line: str, headers: list[tuple[bytes, bytes]], limit: asyncio.Semaphore,
                    ) -> dict[str, Any]:
    """One output record for one input line."""
    try:
        request = json.loads(line)
    except json.JSONDecodeError as exc:
        return _line_error(None, f"the line is not JSON: {exc}")
    if not isinstance(request, dict):
        return _line_error(None, "the line is not a JSON object")
    custom_id = request.get("custom_id")
    if not isinstance(custom_id, str):
        return _line_error(custom_id, "custom_id must be a string")
    if request.get("method", "POST") != "POST":
        return _line_error(custom_id, f"method must be POST, got {request.get('method')!r}")
    if request.get("url") not in BATCH_URLS:
        return _line_error(custom_id, f"url must be one of {', '.join(BATCH_URLS)}, got {request.get('url')!r}")
    body = request.get("body")
    if not isinstance(body, dict):
        return _line_error(custom_id, "body must be a JSON object")
    if body.get("stream"):
        return _line_error(custom_id, "stream is not supported in a batch")
    async with limit:
        status, raw = await _post(app, request["url"], json.dumps(body).encode(), headers)
    try:
        answer = json.loads(raw)
    except json.JSONDecodeError:
        answer = {"error": {"message": raw.decode(errors="replace"), "type": "server_error"}}
    request_id = answer.get("id") if isinstance(answer, dict) and status == 200 else None
    return {"id": f"batch_req_{uuid.uuid4().hex}", "custom_id": custom_id,
            "response": {"status_code": status, "request_id": request_id or f"req_{uuid.uuid4().hex}",
                         "body": answer}, "error": None}


async def run_batch(settings: ServeSettings, lines: Iterable[str]) -> list[dict[str, Any]]:
    """The output record of every non-blank line, in order: all submitted at once, at most
    --max-queue-len waiting in the engine."""
    from pagoda.engine.entrypoints.api_server import build_app

    app = build_app(settings)
    headers = [(b"authorization", f"Bearer {settings.api_key}".encode())] if settings.api_key else []
    limit = asyncio.Semaphore(settings.max_queue_len)
    async with app.router.lifespan_context(app):
        return list(await asyncio.gather(*(_run_line(app, line, headers, limit) for line in lines if line.strip())))


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    from pagoda.engine.entrypoints.args import add_serve_arguments

    parser = subparsers.add_parser("run-batch", help="run an OpenAI batch file (JSONL) through a model, offline")
    parser.add_argument("-i", "--input-file", required=True, help="the requests, one JSON line each ('-': stdin)")
    parser.add_argument("-o", "--output-file", required=True, help="where the results go, one line each ('-': stdout)")
    add_serve_arguments(parser)
    parser.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    from pagoda.engine.entrypoints.args import settings_or_exit

    settings = settings_or_exit(args, "run-batch")
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    source = sys.stdin if args.input_file == "-" else Path(args.input_file).open(encoding="utf-8")
    with source:
        lines = source.read().splitlines()
    results = asyncio.run(run_batch(settings, lines))
    text = "".join(json.dumps(record) + "\n" for record in results)
    if args.output_file == "-":
        sys.stdout.write(text)
    else:
        Path(args.output_file).write_text(text, encoding="utf-8")
    failed = sum(1 for r in results if r["error"] or r["response"]["status_code"] != 200)
    logger.info("%d requests, %d failed", len(results), failed)
    return 0
