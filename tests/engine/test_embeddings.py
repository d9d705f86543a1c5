"""Embeddings: a prompt's last final hidden state, of unit length, equal to Hugging Face's
on the same weights, whether the prompt is chunked, cached or batched with generation."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM

from pagoda.engine.llm import LLM
from pagoda.engine.sampling_params import SamplingParams
from tests.engine.hf_reference import hf_embedding

PROMPTS = [[1, 17, 42, 99, 7, 256, 3, 88, 12, 5, 61, 300, 4, 4, 19, 77, 250, 3], [1, 300, 4], [1] + [9] * 40]


def close(vector: list[float], reference: torch.Tensor) -> bool:
    return torch.allclose(torch.tensor(vector), reference, atol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_embeddings_equal_hugging_face(tiny_model, arch: str) -> None:
    path = tiny_model(arch)
    # A small step budget: the long prompt is prefilled in chunks before it is pooled.
    llm = LLM(str(path), dtype="float32", block_size=4, max_num_batched_tokens=16, max_model_len=256)
    vectors = llm.embed(PROMPTS)
    for vector, prompt in zip(vectors, PROMPTS):
        assert close(vector, hf_embedding(path, prompt))
        assert abs(torch.tensor(vector).norm().item() - 1) < 1e-5
    # Again, now from the prefix cache: the same vectors.
    assert all(close(v, torch.tensor(w)) for v, w in zip(llm.embed(PROMPTS), vectors))
    assert llm.engine.block_manager.num_free_blocks == llm.engine.block_manager.num_usable


def test_embeddings_batched_with_generation(tiny_model) -> None:
    path = tiny_model("llama")
    llm = LLM(str(path), dtype="float32", block_size=4)
    greedy = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    alone = [o.outputs[0].token_ids for o in llm.generate(PROMPTS, greedy)]
    engine = llm.engine
    for i, prompt in enumerate(PROMPTS):
        engine.add_request(f"gen{i}", prompt, greedy)
        engine.add_request(f"emb{i}", prompt, SamplingParams(max_tokens=1), embed=True)
    finals = {}
    while engine.has_unfinished_requests():
        finals.update({out.request_id: out for out in engine.step() if out.finished})
    assert [finals[f"gen{i}"].outputs[0].token_ids for i in range(len(PROMPTS))] == alone
    for i, prompt in enumerate(PROMPTS):
        out = finals[f"emb{i}"]
        assert out.outputs[0].token_ids == [] and out.outputs[0].finish_reason == "stop"
        assert close(out.embedding, hf_embedding(path, prompt))
    with pytest.raises(ValueError, match="no sampling options"):
        engine.add_request("bad", PROMPTS[0], SamplingParams(n=2), embed=True)


def test_decoder_only_checkpoint_serves_embeddings(tiny_model, tmp_path) -> None:
    """Embedding models ship the decoder alone (Qwen3Model: no LM head, no `model.` prefix)."""
    causal = tiny_model("qwen3")
    base_dir = tmp_path / "qwen3-embedding"
    AutoModelForCausalLM.from_pretrained(str(causal), dtype=torch.float32).model.save_pretrained(base_dir)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(causal / name, base_dir / name)
    assert json.loads((base_dir / "config.json").read_text())["architectures"] == ["Qwen3Model"]
    llm = LLM(str(base_dir), dtype="float32", block_size=4)
    for vector, prompt in zip(llm.embed(PROMPTS), PROMPTS):
        assert close(vector, hf_embedding(causal, prompt))
    with pytest.raises(ValueError, match="serves embeddings only"):
        llm.generate(PROMPTS[0], SamplingParams(max_tokens=2))
