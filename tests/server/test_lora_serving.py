"""LoRA adapters over HTTP: selected by the model name, listed by /v1/models, loaded and
unloaded at run time through vLLM's endpoints, and batched with the base model."""

from __future__ import annotations

import concurrent.futures
import pathlib
from collections.abc import Iterator

import pytest

from pagoda.engine.fixtures import make_tiny_lora
from pagoda.engine.llm import LLM
from pagoda.engine.sampling_params import SamplingParams
from tests.engine.test_lora import merge
from tests.server.conftest import MODEL_NAME, RunningServer, serve_in_thread
from tests.server.test_errors import assert_error

openai = pytest.importorskip("openai")

PROMPT = [1, 17, 42, 99, 7, 256, 3, 88]
MAX_TOKENS = 8


@pytest.fixture(scope="module")
def adapters(model_dir: pathlib.Path, tmp_path_factory) -> dict[str, pathlib.Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {"full": make_tiny_lora(model_dir, root / "full", rank=8, seed=1),
            "attn": make_tiny_lora(model_dir, root / "attn", rank=4, targets=("q_proj", "v_proj"), seed=2),
            "wide": make_tiny_lora(model_dir, root / "wide", rank=32, seed=3)}


@pytest.fixture(scope="module")
def expected(model_dir: pathlib.Path, adapters, tmp_path_factory) -> dict[str, str]:
    """Greedy completions of the base model and of each adapter merged into it."""
    root = tmp_path_factory.mktemp("merged")
    greedy = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
    dirs = {MODEL_NAME: model_dir} | {name: merge(model_dir, adapters[name], root / name) for name in ("full", "attn")}
    return {name: LLM(str(path), dtype="float32").generate(PROMPT, greedy)[0].outputs[0].text
            for name, path in dirs.items()}


@pytest.fixture(scope="module")
def lora_server(model_dir: pathlib.Path, adapters) -> Iterator[RunningServer]:
    with serve_in_thread([str(model_dir), "--served-model-name", MODEL_NAME, "--dtype", "float32",
                          "--lora-modules", f"full={adapters['full']}", "--max-lora-rank", "8",
                          "--max-loras", "2"]) as running:
        yield running


def complete(server: RunningServer, model: str) -> str:
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    out = client.completions.create(model=model, prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0,
                                    extra_body={"ignore_eos": True})
    assert out.model == model and out.usage.completion_tokens == MAX_TOKENS
    return out.choices[0].text


def test_adapters_selected_by_model_name(lora_server: RunningServer, adapters, expected) -> None:
    models = {m["id"]: m for m in lora_server.request("GET", "/v1/models").json()["data"]}
    assert set(models) == {MODEL_NAME, "full"}
    assert models["full"]["parent"] == MODEL_NAME and models["full"]["root"] == str(adapters["full"])
    # Base and adapter requests at once: one batch, each with its own weights.
    names = [MODEL_NAME, "full"] * 3
    with concurrent.futures.ThreadPoolExecutor(len(names)) as pool:
        results = list(pool.map(lambda name: complete(lora_server, name), names))
    for name, text in zip(names, results):
        assert text == expected[name], name
    lora_server.wait_idle()


def test_load_and_unload_at_run_time(lora_server: RunningServer, adapters, expected) -> None:
    load = {"lora_name": "attn", "lora_path": str(adapters["attn"])}
    assert_error(lora_server.request("POST", "/v1/completions", {"model": "attn", "prompt": "x"}), 404, "model",
                 "model_not_found")
    ok = lora_server.request("POST", "/v1/load_lora_adapter", load)
    assert ok.status == 200 and b"attn" in ok.body
    assert lora_server.request("POST", "/v1/load_lora_adapter", load).status == 200  # the same again: no change
    assert complete(lora_server, "attn") == expected["attn"]
    ids = [m["id"] for m in lora_server.request("GET", "/v1/models").json()["data"]]
    assert ids == [MODEL_NAME, "attn", "full"]
    assert lora_server.request("POST", "/v1/unload_lora_adapter", {"lora_name": "attn"}).status == 200
    assert_error(lora_server.request("POST", "/v1/chat/completions",
                                     {"model": "attn", "messages": [{"role": "user", "content": "x"}]}),
                 404, "model", "model_not_found")
    lora_server.wait_idle()


@pytest.mark.parametrize(("body", "param", "message"), [
    ({"lora_name": "x", "lora_path": "/nonexistent"}, "lora_path", "adapter_config.json"),
    # Found by the fuzzer: a path the OS refuses outright was a 500.
    ({"lora_name": "x", "lora_path": "/" + "a" * 5000}, "lora_path", "too long"),
    ({"lora_name": "wide", "lora_path": "WIDE"}, "lora_path", "above max_lora_rank 8"),
    ({"lora_name": "full", "lora_path": "ATTN"}, "lora_path", "already served"),
    ({"lora_name": MODEL_NAME, "lora_path": "ATTN"}, "lora_name", "served model's name"),
    ({"lora_name": ""}, "lora_name", ""),
])
def test_bad_loads_are_400(lora_server: RunningServer, adapters, body: dict, param: str, message: str) -> None:
    body = {k: str(adapters[v.lower()]) if v in ("WIDE", "ATTN") else v for k, v in body.items()}
    error = assert_error(lora_server.request("POST", "/v1/load_lora_adapter", body), 400, param)
    assert message in error["message"]
    error = assert_error(lora_server.request("POST", "/v1/unload_lora_adapter", {"lora_name": "nope"}), 400,
                         "lora_name")
    assert "no LoRA adapter named 'nope'" in error["message"]


def test_without_lora_loading_is_refused(idle_server: RunningServer) -> None:
    error = assert_error(idle_server.request("POST", "/v1/load_lora_adapter", {"lora_name": "a", "lora_path": "/x"}),
                         400, "lora_path")
    assert "--enable-lora" in error["message"] or "not enabled" in error["message"]


def test_lora_module_flags(capsys) -> None:
    from pagoda.engine.entrypoints.args import parse_serve_args

    settings = parse_serve_args(["m", "--lora-modules", "a=/x, b=/y/z"], environ={})
    assert settings.lora_modules == (("a", "/x"), ("b", "/y/z")) and settings.engine.enable_lora
    assert parse_serve_args(["m"], environ={"PAGODA_LORA_MODULES": "a=/x"}).lora_modules == (("a", "/x"),)
    assert not parse_serve_args(["m"], environ={}).engine.enable_lora
    for bad, message in [("a", "expected NAME=PATH"), ("a=/x,a=/y", "must be unique"),
                         ("m=/x", "served model's name")]:
        with pytest.raises(SystemExit):
            parse_serve_args(["m", "--lora-modules", bad], environ={})
        assert message in capsys.readouterr().err
