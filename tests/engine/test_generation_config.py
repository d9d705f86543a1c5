"""A model's generation_config.json sets the sampling defaults of requests that set none (vLLM's
--generation-config auto), on the offline API and the server alike."""

from __future__ import annotations

import json
import pathlib
import shutil

import pytest

from pagoda.engine.llm import LLM
from pagoda.engine.sampling_params import SamplingParams, sampling_defaults

PROMPT = "Hello, my name is"


@pytest.fixture(scope="module")
def greedy_by_default(tiny_model, tmp_path_factory) -> pathlib.Path:
    """The tiny model whose generation config asks for greedy decoding (and a top_k, to see it read)."""
    path = tmp_path_factory.mktemp("generation-config") / "model"
    shutil.copytree(tiny_model("llama"), path)
    config = json.loads((path / "generation_config.json").read_text())
    config.update(temperature=0.0, top_k=20, do_sample=True, max_new_tokens=99)
    (path / "generation_config.json").write_text(json.dumps(config))
    return path


def test_the_sampling_keys_are_read_and_checked(greedy_by_default: pathlib.Path, tmp_path: pathlib.Path) -> None:
    assert sampling_defaults(str(greedy_by_default)) == {"temperature": 0.0, "top_k": 20}
    assert sampling_defaults(str(greedy_by_default), "vllm") == {}
    assert sampling_defaults(str(tmp_path)) == {}  # auto, and the model has none: the engine's defaults
    (tmp_path / "generation_config.json").write_text(json.dumps({"top_p": 1.5}))
    with pytest.raises(ValueError, match="top_p"):
        sampling_defaults("unused", str(tmp_path))
    with pytest.raises(ValueError, match="does not exist"):
        sampling_defaults("unused", str(tmp_path / "nowhere"))


def test_offline_calls_without_parameters_use_them(greedy_by_default: pathlib.Path) -> None:
    llm = LLM(str(greedy_by_default), kv_cache_memory_bytes=16 << 20)
    assert (llm.get_default_sampling_params().temperature, llm.get_default_sampling_params().top_k) == (0.0, 20)
    greedy = llm.generate(PROMPT, SamplingParams(temperature=0.0, max_tokens=16))[0].outputs[0].token_ids
    assert [llm.generate(PROMPT)[0].outputs[0].token_ids for _ in range(2)] == [greedy] * 2
    plain = LLM(str(greedy_by_default), kv_cache_memory_bytes=16 << 20, generation_config="vllm")
    assert plain.get_default_sampling_params().temperature == 1.0


@pytest.mark.parametrize("source, greedy_default", [("auto", True), ("vllm", False)])
def test_the_server_fills_unset_fields_from_it(greedy_by_default: pathlib.Path, source: str,
                                               greedy_default: bool) -> None:
    from tests.server.conftest import serve_in_thread

    with serve_in_thread([str(greedy_by_default), "--served-model-name", "m",
                          "--generation-config", source]) as server:
        def completion(**fields: object) -> str:
            body = {"model": "m", "prompt": PROMPT, "max_tokens": 16, "seed": 7, **fields}
            return server.request("POST", "/v1/completions", body).json()["choices"][0]["text"]

        greedy = completion(temperature=0)
        assert (completion() == greedy) is greedy_default
        assert completion(temperature=1.0) != greedy  # a field the request sets wins
