"""`pagoda serve` as a process: flags and environment, readiness, and the SIGTERM drain."""

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

from pagoda.engine.entrypoints.args import FLAGS, parse_serve_args
from tests.server.conftest import free_port

pytest.importorskip("uvicorn")


def test_flags_read_the_environment_and_the_command_line_wins() -> None:
    env = {"PAGODA_MODEL": "/models/m", "PAGODA_PORT": "9000", "PAGODA_MAX_NUM_SEQS": "7",
           "PAGODA_ENABLE_PREFIX_CACHING": "false", "PAGODA_API_KEY": "k", "PAGODA_DTYPE": "bfloat16"}
    s = parse_serve_args([], environ=env)
    assert (s.engine.model, s.port, s.engine.max_num_seqs, s.api_key) == ("/models/m", 9000, 7, "k")
    assert s.engine.enable_prefix_caching is False and s.engine.dtype == "bfloat16"
    assert s.served_model_name == "/models/m"
    s = parse_serve_args(["/other", "--port", "1", "--enable-prefix-caching", "--served-model-name", "x"],
                         environ=env)
    assert (s.engine.model, s.port, s.engine.enable_prefix_caching, s.served_model_name) == ("/other", 1, True, "x")
    defaults = parse_serve_args(["/m"], environ={})
    assert defaults.engine.block_size == 16 and defaults.engine.enable_prefix_caching is True
    assert defaults.api_key is None and defaults.port == 8000


def test_every_flag_of_the_issue_exists_with_its_env_var() -> None:
    names = {f.name for f in FLAGS}
    for flag in ("host", "port", "served-model-name", "api-key", "dtype", "max-model-len", "max-num-seqs",
                 "max-num-batched-tokens", "block-size", "enable-prefix-caching", "gpu-memory-utilization",
                 "tensor-parallel-size", "max-queue-len", "log-level"):
        assert flag in names
    assert {f.env for f in FLAGS} >= {"PAGODA_API_KEY", "PAGODA_MAX_QUEUE_LEN", "PAGODA_LOG_LEVEL"}


def test_speculative_config_and_quantization_flags() -> None:
    s = parse_serve_args(["/m", "--speculative-config", '{"method": "ngram", "num_speculative_tokens": 3}',
                          "--quantization", "fp8"], environ={})
    spec = s.engine.speculative_config
    assert (spec.method, spec.num_speculative_tokens, spec.prompt_lookup_max) == ("ngram", 3, 4)
    assert s.engine.quantization == "fp8"
    assert parse_serve_args(["/m"], environ={}).engine.speculative_config is None


@pytest.mark.parametrize("env", [{"PAGODA_PORT": "eighty"}, {"PAGODA_DTYPE": "float8"},
                                 {"PAGODA_ENABLE_PREFIX_CACHING": "perhaps"},
                                 {"PAGODA_SPECULATIVE_CONFIG": "{ngram}"},
                                 {"PAGODA_SPECULATIVE_CONFIG": '{"method": "eagle", "num_speculative_tokens": 2}'},
                                 {"PAGODA_QUANTIZATION": "int4"}])
def test_bad_environment_values_are_refused(env: dict[str, str]) -> None:
    with pytest.raises(SystemExit):
        parse_serve_args(["/m"], environ=env)


def _get(port: int, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    finally:
        conn.close()


def test_sigterm_drains_in_flight_requests_and_exits_0(model_dir: pathlib.Path) -> None:
    port = free_port()
    env = {**os.environ, "PAGODA_HOST": "127.0.0.1", "PAGODA_PORT": str(port), "PAGODA_MODEL": str(model_dir),
           "PAGODA_SERVED_MODEL_NAME": "drained", "PAGODA_MAX_NUM_SEQS": "4", "PAGODA_LOG_LEVEL": "info"}
    proc = subprocess.Popen([sys.executable, "-m", "pagoda.cli", "serve"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if _get(port, "/ready") == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the server did not become ready"
            time.sleep(0.2)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        body = {"model": "drained", "prompt": "Hello", "max_tokens": 1500, "ignore_eos": True, "stream": True}
        conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200 and resp.readline().startswith(b"data: ")
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        with pytest.raises(OSError):  # no new connections while draining
            _get(port, "/health")
        rest = resp.read().decode()  # but the stream in flight runs to its end
        events = [line[len("data: "):] for line in rest.splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        assert json.loads(events[-2])["choices"][0]["finish_reason"] == "length"
        conn.close()
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = proc.stdout.read()
    request_lines = [json.loads(line.split("pagoda.requests: ", 1)[1]) for line in log.splitlines()
                     if "pagoda.requests: " in line]
    assert [r["status"] for r in request_lines] == ["finished"]
    assert request_lines[0]["completion_tokens"] == 1500
    assert "Hello" not in log  # no prompt text in the logs


def test_a_bad_serve_variable_does_not_break_other_subcommands(tmp_path: pathlib.Path) -> None:
    env = {**os.environ, "PAGODA_PORT": "eighty"}
    made = subprocess.run([sys.executable, "-m", "pagoda.cli", "make-tiny-model", str(tmp_path / "m")],
                          env=env, capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    served = subprocess.run([sys.executable, "-m", "pagoda.cli", "serve", str(tmp_path / "m")],
                            env=env, capture_output=True, text=True)
    assert served.returncode != 0 and "PAGODA_PORT" in served.stderr


def test_multi_node_flags() -> None:
    leader = parse_serve_args(["/m", "--tensor-parallel-size", "8", "--nnodes", "2", "--master-addr", "10.0.0.7",
                               "--master-port", "29600"], environ={})
    assert (leader.engine.nnodes, leader.engine.ranks_per_node, leader.headless) == (2, 4, False)
    worker = parse_serve_args(["/m", "--tensor-parallel-size", "8", "--nnodes", "2", "--node-rank", "1",
                               "--headless"], environ={"PAGODA_MASTER_ADDR": "10.0.0.7"})
    assert (worker.engine.node_rank, worker.engine.master_addr, worker.headless) == (1, "10.0.0.7", True)
    for argv in (["--headless"], ["--nnodes", "2", "--tensor-parallel-size", "2", "--node-rank", "1"],
                 ["--nnodes", "2", "--tensor-parallel-size", "3"]):
        with pytest.raises(SystemExit):
            parse_serve_args(["/m", *argv], environ={})
