"""`pagoda serve --tensor-parallel-size 2` on CPU: same greedy answers, and a dead worker fails /health."""

from __future__ import annotations

import http.client
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from tests.server.conftest import free_port

pytest.importorskip("uvicorn")


def _request(port: int, method: str, path: str, body: dict | None = None) -> tuple[int, dict | None]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(method, path, json.dumps(body) if body else None, {"content-type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, json.loads(data) if data else None
    finally:
        conn.close()


def _serve(model_dir: pathlib.Path, port: int, tp: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "pagoda.cli", "serve", str(model_dir), "--host", "127.0.0.1", "--port", str(port),
           "--served-model-name", "m", "--tensor-parallel-size", str(tp), "--dtype", "float32"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 180
    while True:
        assert proc.poll() is None, proc.stdout.read()
        try:
            if _request(port, "GET", "/ready")[0] == 200:
                return proc
        except OSError:
            pass
        assert time.monotonic() < deadline, "the server did not become ready"
        time.sleep(0.3)


def _tp_workers(pid: int) -> list[int]:
    """Child processes started by multiprocessing's spawn (the resource tracker excluded)."""
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    workers = []
    for child in children:
        cmdline = pathlib.Path(f"/proc/{child}/cmdline").read_bytes().decode(errors="replace")
        if "spawn_main" in cmdline:
            workers.append(int(child))
    return workers


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_tensor_parallel_server_answers_like_one_process_and_reports_a_dead_worker(model_dir: pathlib.Path) -> None:
    body = {"model": "m", "prompt": "Hello, my name is", "max_tokens": 12, "temperature": 0, "ignore_eos": True}
    answers = {}
    for tp in (1, 2):
        port = free_port()
        proc = _serve(model_dir, port, tp)
        try:
            status, resp = _request(port, "POST", "/v1/completions", body)
            assert status == 200, resp
            answers[tp] = resp["choices"][0]["text"]
            if tp == 2:
                workers = _tp_workers(proc.pid)
                assert len(workers) == 1
                os.kill(workers[0], signal.SIGKILL)
                deadline = time.monotonic() + 30
                while _request(port, "GET", "/health")[0] == 200:
                    assert time.monotonic() < deadline, "/health stayed up with a dead worker"
                    time.sleep(0.2)
                assert _request(port, "GET", "/ready")[0] == 503
        finally:
            _stop(proc)
    assert answers[1] == answers[2]
